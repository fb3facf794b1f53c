"""What generate.py and sweep.py share: reading the examples, loading each checkpoint once, the
speculative options and the static config recorded in every row. Reads the absl FLAGS both
scripts define (same names)."""
from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def load_examples():
    from costeer_jax import data

    if bool(FLAGS.task) == bool(FLAGS.prompts_file):
        raise app.UsageError("pass exactly one of --task or --prompts_file")
    if FLAGS.prompts_file:
        examples = data.load_prompts_file(FLAGS.prompts_file)
        return examples[:FLAGS.limit] if FLAGS.limit else examples
    return data.load_task(FLAGS.task, FLAGS.data_dir, FLAGS.preference, FLAGS.limit)


def load_models(method, mesh=None, params_cache=None):
    """One checkpoint serving several roles is loaded (and run) once; with a mesh, params are
    placed sharded and every replication fallback is reported."""
    from costeer_jax.decoding.methods import LLM, SLM, SLM_SFT, STREAMS
    from costeer_jax.models.params_cache import load_model_cached

    roles = {STREAMS[s][0] for s in method.streams}
    specs = {LLM: FLAGS.llm, SLM: FLAGS.slm, SLM_SFT: FLAGS.slm_sft}
    if SLM_SFT in roles and not FLAGS.slm_sft:
        raise app.UsageError("--method=proxy_tuning needs --slm_sft (the fine-tuned SLM checkpoint)")
    loaded, models = {}, {}
    for role in sorted(roles):
        spec = specs[role]
        if spec not in loaded:
            loaded[spec] = load_model_cached(spec, FLAGS.dtype, params_cache, mesh=mesh)
            if mesh is not None:
                from costeer_jax import sharding

                for note in sharding.sharding_notes(loaded[spec].params, loaded[spec].cfg, mesh, FLAGS.batch_size):
                    print(f"sharding: {spec}: {note}", file=sys.stderr)
        models[role] = loaded[spec]
    return models


def speculative_options(method_name: str):
    from costeer_jax.decoding.methods import SPECULATIVE_METHOD_NAMES, SpeculativeOptions

    if method_name not in SPECULATIVE_METHOD_NAMES:
        return None
    if FLAGS.K < 1 or FLAGS.downlink_topk < 0:
        raise app.UsageError("--K must be >= 1 and --downlink_topk >= 0")
    return SpeculativeOptions(
        num_draft=FLAGS.K, bonus={"auto": None, "on": True, "off": False}[FLAGS.bonus_token],
        acceptance=FLAGS.acceptance, downlink_topk=FLAGS.downlink_topk, sd_drafter=FLAGS.sd_drafter)


def static_config(generator, method_name: str) -> dict:
    """Compile-time settings recorded in each row's `config` (beside the per-row hyperparameters)."""
    if generator.spec is None:
        return {}
    config = dict(K=generator.spec.num_draft, bonus_token=generator.spec.bonus,
                  threshold_acceptance=generator.spec.threshold_acceptance,
                  downlink_topk=generator.spec.downlink_topk)
    if method_name == "sd":
        config["sd_drafter"] = FLAGS.sd_drafter
    return config
