"""Batched generation for every method of the CoSteer / SpecSteer papers.

  python experiments/generate.py --method=costeer --task=helpsteer --preference=concise \
      --limit=8 --batch_size=8 --max_new_tokens=64 --output=outputs/helpsteer_concise_costeer.jsonl
  python experiments/generate.py --method=specsteer --K=4 --spec_lambda=0.5 --spec_beta=1.0 \
      --task=cogenesis --limit=8 --output=outputs/cogenesis_specsteer.jsonl

Defaults to the embedded SmolLM2-135M-Instruct as both LLM and SLM. The output is resumable:
rerunning with the same --output skips ids already written. The last stdout line is one JSON
object of run figures (for specsteer/sd also the acceptance rate, mean accepted length, LLM
forward calls and link bytes per generated token).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.decoding.methods import DEFAULT_HYPER, METHOD_NAMES  # noqa: E402
from experiments import run_setup  # noqa: E402

FLAGS = flags.FLAGS
run_setup.define_run_flags(batch_size_default=8, batch_size_help="Prompts decoded together.")
flags.DEFINE_enum("method", "llm_wo", METHOD_NAMES, "Decoding method.")
flags.DEFINE_string("output", None, "Output jsonl (appended to; finished ids are skipped).")
flags.DEFINE_float("alpha", DEFAULT_HYPER["alpha"], "CoSteer alpha (LLM alignment term).")
flags.DEFINE_float("beta", DEFAULT_HYPER["beta"], "CoSteer beta (SLM delta term).")
flags.DEFINE_float("lam", DEFAULT_HYPER["lam"], "CoSteer lambda (KL to the LLM).")
flags.DEFINE_float("eta", DEFAULT_HYPER["eta"], "CoSteer eta (FTRL step).")
flags.DEFINE_integer("T", DEFAULT_HYPER["T"], "CoSteer FTRL iterations per token.")
flags.DEFINE_float("tau", DEFAULT_HYPER["tau"], "AdaCoSteer confidence threshold.")
flags.DEFINE_integer("k_consecutive", DEFAULT_HYPER["k_consecutive"], "AdaCoSteer streak length.")
flags.DEFINE_float("cs_lambda", DEFAULT_HYPER["cs_lambda"], "LA/CS scaling (B.8: 1.5, 2.0, 2.5).")
flags.DEFINE_float("spec_lambda", DEFAULT_HYPER["spec_lambda"], "SpecSteer verification threshold lambda (Eq. 7).")
flags.DEFINE_float("spec_beta", DEFAULT_HYPER["spec_beta"], "SpecSteer recovery steering strength beta (Eq. 8).")
flags.DEFINE_string("mesh", None, "Device mesh, e.g. data:8 or data:2,model:4 (default: one device).")
flags.DEFINE_bool("multihost", None, "Call jax.distributed.initialize() (default: detect a TPU slice).")

def main(argv):
    del argv
    from costeer_jax.decoding.hyperparams import check_hyper
    from costeer_jax.decoding.methods import get_method
    from costeer_jax.decoding.runner import Generator, Sampling, check_copy_guard, generate_to_file

    run_setup.maybe_list_models()
    if not FLAGS.output:
        raise app.UsageError("--output is required (a jsonl path)")
    if FLAGS.batch_size < 1 or FLAGS.max_new_tokens < 1:
        raise app.UsageError("--batch_size and --max_new_tokens must be positive")
    from costeer_jax import distributed, sharding

    distributed.maybe_initialize_distributed(FLAGS.multihost)
    run_setup.enable_compilation_cache()
    process_index, process_count = distributed.process_coordinates()
    mesh = sharding.make_mesh(FLAGS.mesh) if FLAGS.mesh else None
    if mesh is not None:
        sharding.check_batch_divisible(FLAGS.batch_size, mesh)
    examples = run_setup.load_examples()
    if process_count > 1:  # each host decodes its own share into its own resumable file
        examples = distributed.host_shard(examples, process_index, process_count)
    output = distributed.shard_output_path(FLAGS.output, process_index, process_count)
    method = get_method(FLAGS.method, max_T=max(FLAGS.T, 1), speculative=run_setup.speculative_options(FLAGS.method),
                        ada_stop_on_streak=FLAGS.ada_stop_on_streak)
    hyper = {k: getattr(FLAGS, k) for k in method.hyper_keys}
    # Refuse bad values before minutes of loading (the Generator prints the degenerate-value warnings).
    check_hyper(hyper)
    check_copy_guard(FLAGS.method, FLAGS.copy_guard)
    run_setup.check_batching(method)
    sampling = Sampling(not FLAGS.do_sample, FLAGS.temperature, FLAGS.top_p, FLAGS.seed)
    t0 = time.perf_counter()
    models = run_setup.load_models(method, mesh)
    load_seconds = time.perf_counter() - t0
    generator = Generator(
        method, models, max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
        sampling=sampling, hyper=hyper, mesh=mesh, **run_setup.generator_options())
    config = {**hyper, **run_setup.static_config(generator, FLAGS.method)}
    extra = {"config": config} if config else None
    from costeer_jax.decoding.continuous import ContinuousBatchingError

    try:
        figures = generate_to_file(generator, examples, Path(output), progress=FLAGS.progress,
                                   extra_fields=extra, batching=FLAGS.batching, segment_steps=FLAGS.segment_steps)
    except ContinuousBatchingError as e:
        raise app.UsageError(str(e)) from None
    summary = {"method": FLAGS.method, "llm": FLAGS.llm, "slm": FLAGS.slm,
               "batch_size": FLAGS.batch_size, "batching": FLAGS.batching, "max_new_tokens": FLAGS.max_new_tokens,
               "load_seconds": round(load_seconds, 3), **figures.as_dict(), **config,
               "mesh": FLAGS.mesh, "process_index": process_index, "process_count": process_count,
               "output": str(output)}
    print(json.dumps(summary))


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
