"""A hyperparameter sweep decoded as one batched job: prompts x configurations are the rows of the
same batches, each row with its own hyperparameters, one compiled program for the whole grid.

  python experiments/sweep.py --config=launch/sweeps/alpha_beta_2x2.json --output_dir=outputs/sweep
  python experiments/sweep.py --method=costeer --grid='alpha=1,2;beta=0.5,1' --fixed='T=20' \
      --task=helpsteer --preference=concise --limit=64 --batch_size=32 --output_dir=outputs/sweep

Writes one generate.py-style jsonl per configuration, OUTPUT_DIR/<method>_<key>=<value>_....jsonl
(rows carry "config"), resumable per (configuration, id). --batch_size counts rows, i.e.
(prompt, configuration) pairs. A --config file's "fixed" may hold hyperparameters and run options
(task, limit, batch_size, max_new_tokens, seed, ...); flags given on the command line win over it,
--grid entries replace the file's entries of the same key. The last stdout line is one JSON object
of figures. Then:

  python experiments/evaluate.py --task=helpsteer --preference=concise \
      --predictions='outputs/sweep/*.jsonl' --output=results/sweep.json
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
run_setup.define_run_flags(batch_size_default=32, batch_size_help="Rows, i.e. (prompt, configuration) pairs, decoded together.")
flags.DEFINE_string("config", None, 'Sweep file: {"method", "grid": {KEY: [values]}, "fixed": {KEY: value}}.')
flags.DEFINE_string("grid", None, "Swept hyperparameters, e.g. 'alpha=1,2;beta=0.5,1'.")
flags.DEFINE_string("fixed", None, "Non-swept hyperparameters, e.g. 'lam=2;T=20' (default: CoSteer Table 4).")
flags.DEFINE_string("output_dir", None, "Folder of the per-configuration jsonl files (resumable).")
flags.DEFINE_enum("method", None, METHOD_NAMES, "Decoding method (default: the --config file's).")

# Run options a --config file's "fixed" may set (unless given on the command line).
RUN_OPTIONS = ("llm", "slm", "slm_sft", "prompts_file", "task", "preference", "data_dir", "limit", "batch_size",
               "max_new_tokens", "seed", "do_sample", "temperature", "top_p", "dtype", "K", "acceptance",
               "downlink_topk", "bonus_token", "sd_drafter", "batching", "segment_steps")


def resolve_spec():
    """(method name, grid, fixed hyperparameters) from --config, --grid, --fixed and --method."""
    from costeer_jax.decoding.sweep import load_sweep_file, parse_assignments

    spec = load_sweep_file(FLAGS.config) if FLAGS.config else {"method": None, "grid": {}, "fixed": {}}
    where = FLAGS.config or "--method"
    method = FLAGS.method if FLAGS["method"].present or not spec["method"] else spec["method"]
    if method is None:
        raise app.UsageError("pass --method or a --config file naming one")
    if method not in METHOD_NAMES:
        raise app.UsageError(f"{where}: unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
    fixed_hyper = {}
    for key, value in spec["fixed"].items():
        if key in DEFAULT_HYPER:
            fixed_hyper[key] = value  # checked against the method in expand_grid
        elif key in RUN_OPTIONS:
            if not FLAGS[key].present and value is not None:
                try:
                    FLAGS[key].parse(str(value).lower() if isinstance(value, bool) else str(value))
                except flags.IllegalFlagValueError as e:
                    raise app.UsageError(f"{where}: fixed {key}={value!r}: {e}") from None
        else:
            raise app.UsageError(f"{where}: unknown 'fixed' key {key!r}; expected a hyperparameter "
                                 f"({', '.join(DEFAULT_HYPER)}) or a run option ({', '.join(RUN_OPTIONS)})")
    # The command line wins over the file: a --grid key drops the file's fixed value of that
    # key, a --fixed key drops the file's grid entry.
    cli_grid = parse_assignments(FLAGS.grid, "--grid")
    cli_fixed = parse_assignments(FLAGS.fixed, "--fixed")
    for key, values in cli_fixed.items():
        if len(values) != 1:
            raise app.UsageError(f"--fixed: {key} takes one value, got {len(values)}")
    grid = {k: v for k, v in spec["grid"].items() if k not in cli_fixed}
    grid.update(cli_grid)
    fixed_hyper = {k: v for k, v in fixed_hyper.items() if k not in cli_grid}
    fixed_hyper.update({k: v[0] for k, v in cli_fixed.items()})
    return method, grid, fixed_hyper


def main(argv):
    del argv
    from costeer_jax.decoding import sweep
    from costeer_jax.decoding.continuous import ContinuousBatchingError
    from costeer_jax.decoding.methods import get_method
    from costeer_jax.decoding.runner import Generator, Sampling

    run_setup.maybe_list_models()
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (a folder; one jsonl per configuration)")
    try:
        method_name, grid, fixed = resolve_spec()
        # The grid is checked against the method before any model is loaded.
        configs = sweep.expand_grid(get_method(method_name), grid, fixed, FLAGS.config or "--grid")
    except sweep.SweepError as e:
        raise app.UsageError(str(e)) from None
    if FLAGS.batch_size < 1 or FLAGS.max_new_tokens < 1:
        raise app.UsageError("--batch_size and --max_new_tokens must be positive")
    # One program for the whole grid: the FTRL scan runs to the largest T, masked per row.
    method = get_method(method_name, max_T=sweep.max_T(configs), speculative=run_setup.speculative_options(method_name),
                        ada_stop_on_streak=FLAGS.ada_stop_on_streak)
    run_setup.check_batching(method)
    examples = run_setup.load_examples()
    sampling = Sampling(not FLAGS.do_sample, FLAGS.temperature, FLAGS.top_p, FLAGS.seed)
    run_setup.enable_compilation_cache()
    t0 = time.perf_counter()
    models = run_setup.load_models(method)
    load_seconds = time.perf_counter() - t0
    generator = Generator(
        method, models, max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
        sampling=sampling, **run_setup.generator_options())
    static_config = run_setup.static_config(generator, method_name)
    try:
        figures = sweep.run_sweep(generator, examples, configs, FLAGS.output_dir, progress=FLAGS.progress,
                                  static_config=static_config, batching=FLAGS.batching,
                                  segment_steps=FLAGS.segment_steps)
    except (sweep.SweepError, ContinuousBatchingError) as e:
        raise app.UsageError(str(e)) from None
    summary = {"method": method_name, "llm": FLAGS.llm, "slm": FLAGS.slm, "batch_size": FLAGS.batch_size,
               "max_new_tokens": FLAGS.max_new_tokens, "output_dir": FLAGS.output_dir,
               "load_seconds": round(load_seconds, 3), **figures.as_dict(),
               "grid": {k: list(dict.fromkeys(dict(c.point)[k] for c in configs)) for k in grid},
               "fixed": {k: v for k, v in configs[0].hyper.items() if k not in grid}}
    print(json.dumps(summary))


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
