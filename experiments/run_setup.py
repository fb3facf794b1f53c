"""What generate.py and sweep.py share: reading the examples, loading each checkpoint once, the
speculative options and the static config recorded in every row. Reads the absl FLAGS both
scripts define (same names)."""
from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_run_flags(batch_size_default: int, batch_size_help: str) -> None:
    """The model, input, decoding and speculative flags both entry points take."""
    from costeer_jax.models.loading import DEFAULT_MODEL

    flags.DEFINE_string("llm", DEFAULT_MODEL, "Cloud LLM: registered alias (--list_models), HF directory, "
                        ".gguf file or hub id.")
    flags.DEFINE_string("slm", DEFAULT_MODEL, "Local SLM: registered alias (--list_models), HF directory, "
                        ".gguf file or hub id.")
    flags.DEFINE_string("slm_sft", None, "Fine-tuned SLM for --method=sft / proxy_tuning: a LoRA adapter folder "
                        "(experiments/train_lora.py's OUTPUT_DIR/adapter, on --slm's weights) or a full checkpoint.")
    flags.DEFINE_string("slm_plus", None, "specsteer/sd: SLM+ drafts as this fine-tuned SLM (a LoRA adapter folder "
                        "on --slm, or a checkpoint); SLM- stays --slm.")
    flags.DEFINE_bool("slm_plus_context", False, "With --slm_plus: SLM+ also reads the private context (LoRA + "
                      "RAG); default the bare query (SpecSteer A.2's LoRA specialist).")
    flags.DEFINE_bool("list_models", False, "Print the registered offline models (aliases for --llm/--slm) "
                      "and whether they are installed, then exit.")
    flags.DEFINE_string("params_cache", None,
                        "Folder of converted params, memory-mapped by later runs (default: "
                        "$COSTEER_JAX_CACHE/params, i.e. ~/.cache/costeer_jax/params; empty turns it off).")
    flags.DEFINE_string("prompts_file", None, 'jsonl rows {"id", "input", "personalized_input"}.')
    flags.DEFINE_string("task", None, "Benchmark task name (see costeer_jax.data.TASKS).")
    flags.DEFINE_string("preference", None, "concise|creative|uplifting|verbose for preference tasks.")
    flags.DEFINE_string("data_dir", None, "Dataset folder (default: ../shared/data/costeer_release).")
    flags.DEFINE_integer("limit", None, "Only the first N examples.")
    flags.DEFINE_string("split", "dev", "LaMP/LongLaMP split read from --data_dir: train, dev or test.")
    flags.DEFINE_enum("longlamp_setting", "user", ["user", "temporal"], "LongLaMP hub setting when no --data_dir "
                      "(SpecSteer B.3 uses temporal).")
    flags.DEFINE_integer("top_users", None, "LaMP/LongLaMP: only the N users with the longest profiles (SpecSteer "
                         "B.3: the 100 most active), in file order, before --limit.")
    flags.DEFINE_enum("retrieval", "bge", ["bge", "bm25"], "LongLaMP history records: the release's bge-reranker "
                      "ranking, or BM25 over the row's whole profile (CoSteer Table 9, SpecSteer Table 7).")
    flags.DEFINE_integer("retrieval_k", 5, "LongLaMP history records in the private context.")
    flags.DEFINE_enum("noise", "none", ["none", "irrelevant", "appended"],
                      "LongLaMP robustness settings: irrelevant = records of another task (CoSteer Table 10); "
                      "appended = low-similarity records of other users after the retrieved ones (SpecSteer "
                      "Table 7). See costeer_jax/data/context_options.py.")
    flags.DEFINE_integer("noise_k", None, "--noise=appended: records appended (default --retrieval_k).")
    flags.DEFINE_integer("noise_seed", 0, "Seed of the noise draws (per row: seed and row id).")
    flags.DEFINE_integer("batch_size", batch_size_default, batch_size_help)
    flags.DEFINE_integer("max_new_tokens", 128, "Generation budget per example.")
    flags.DEFINE_integer("seed", 0, "Sampling seed (per-example keys derive from it and the id).")
    flags.DEFINE_bool("do_sample", False, "Sample instead of greedy decoding.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Model parameter dtype.")
    flags.DEFINE_integer("K", 4, "specsteer/sd: draft tokens per iteration.")
    flags.DEFINE_enum("acceptance", "auto", ["auto", "threshold", "stochastic"],
                      "SpecSteer acceptance: threshold (accept iff P_LLM >= lambda P_SLM-), stochastic "
                      "(u <= alpha, Algorithm 1), auto = threshold when greedy, stochastic when sampling.")
    flags.DEFINE_integer("downlink_topk", 0, "SpecSteer: truncate the cloud term h_LLM - beta h_SLM- to its "
                         "top-k on recovery, as deployed (App. D); 0 = exact Eq. 8 (bytes are then "
                         "accounted for k=32).")
    flags.DEFINE_enum("bonus_token", "auto", ["auto", "on", "off"],
                      "specsteer/sd: draw a bonus token when all K drafts pass (auto: off for specsteer "
                      "as Algorithm 1, on for sd).")
    flags.DEFINE_enum("sd_drafter", "slm_w", ["slm_w", "slm_wo"], "sd: draft with SLM+ (private context) or SLM-.")
    flags.DEFINE_integer("copy_guard", 0, "Forbid, on the edge, the token completing a verbatim copy of N tokens of "
                         "the private context not also in the query (steering methods, SLM settings and the "
                         "SpecSteer/SD drafter; 0: off, the papers' behaviour). A mitigation: paraphrase passes.")
    flags.DEFINE_bool("ada_stop_on_streak", False, "ada_costeer: decode the step that completes the k-step "
                      "confidence streak with the plain LLM, as the authors' release does (default: that step "
                      "is still steered; vanilla LLM from the next step).")
    flags.DEFINE_bool("record_cloud_view", False, "Add to each row `cloud_view`: the token ids the cloud received "
                      "beyond the bare query (drafts included; see costeer_jax/privacy.py), and its text.")
    flags.DEFINE_bool("progress", True, "tqdm progress bar on stderr.")
    flags.DEFINE_enum("batching", "static", ["static", "continuous"],
                      "static: each batch runs until its longest row ends. continuous: --batch_size slots; a finished "
                      "row's slot takes the next prompt (same tokens per example; not for specsteer_cross or "
                      "--mesh).")
    flags.DEFINE_integer("segment_steps", 8, "Continuous batching: steps (specsteer/sd: Draft-Verify iterations) "
                         "between the host's refills of finished slots.")
    define_compilation_cache_flag()


def define_compilation_cache_flag() -> None:
    flags.DEFINE_string("compilation_cache_dir", None,
                        "Persistent XLA compilation cache: later runs with the same shapes skip compiling "
                        "(default: $JAX_COMPILATION_CACHE_DIR or ~/.cache/costeer_jax/xla; empty turns it off).")


def check_batching(method) -> None:
    """Refuses --batching=continuous where it does not apply, before any model is loaded."""
    if FLAGS.batching == "continuous":
        from costeer_jax.decoding.continuous import check_continuous

        try:
            check_continuous(method, mesh=getattr(FLAGS, "mesh", None))
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    if FLAGS.segment_steps < 1:
        raise app.UsageError(f"--segment_steps must be >= 1 (got {FLAGS.segment_steps})")


def maybe_list_models() -> None:
    """--list_models: the registry table, then exit (before any other flag is checked)."""
    if FLAGS.list_models:
        from costeer_jax.models.registry import list_models_text

        print(list_models_text())
        sys.exit(0)


def enable_compilation_cache() -> None:
    from costeer_jax.compilation_cache import enable_compilation_cache as enable

    try:
        enable(FLAGS.compilation_cache_dir)
    except OSError as e:
        raise app.UsageError(str(e)) from None


def load_examples():
    from costeer_jax import data

    if bool(FLAGS.task) == bool(FLAGS.prompts_file):
        raise app.UsageError("pass exactly one of --task or --prompts_file")
    if FLAGS.prompts_file:
        examples = data.load_prompts_file(FLAGS.prompts_file)
        return examples[:FLAGS.limit] if FLAGS.limit else examples
    try:
        return data.load_task(FLAGS.task, FLAGS.data_dir, FLAGS.preference, FLAGS.limit, split=FLAGS.split,
                              setting=FLAGS.longlamp_setting, context=context_options(), top_users=FLAGS.top_users)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def context_options():
    from costeer_jax.data.context_options import ContextOptions

    try:
        return ContextOptions(retrieval=FLAGS.retrieval, k=FLAGS.retrieval_k, noise=FLAGS.noise,
                              noise_k=FLAGS.noise_k, noise_seed=FLAGS.noise_seed)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def fine_tuned_spec() -> str | None:
    if FLAGS.slm_plus and FLAGS.slm_sft and FLAGS.slm_plus != FLAGS.slm_sft:
        raise app.UsageError("--slm_plus and --slm_sft name the same role (the fine-tuned SLM); pass one")
    return FLAGS.slm_plus or FLAGS.slm_sft


def load_models(method, mesh=None):
    """One checkpoint serving several roles is loaded (and run) once; with a mesh, params are
    placed sharded and every replication fallback is reported. A LoRA adapter folder as the
    fine-tuned SLM is --slm's params (the same arrays) plus that adapter."""
    import dataclasses

    from costeer_jax.decoding.methods import LLM, SLM, SLM_SFT, STREAMS
    from costeer_jax.models import lora
    from costeer_jax.models.params_cache import load_model_cached

    roles = {STREAMS[s][0] for s in method.streams}
    specs = {LLM: FLAGS.llm, SLM: FLAGS.slm, SLM_SFT: fine_tuned_spec()}
    if SLM_SFT in roles and not specs[SLM_SFT]:
        flag = "--slm_plus" if method.speculative is not None else "--slm_sft"
        raise app.UsageError(f"--method={method.name} with this drafter needs {flag} (a LoRA adapter folder from "
                             "experiments/train_lora.py, or a fine-tuned checkpoint)")
    adapter_role = SLM_SFT in roles and lora.is_adapter_dir(specs[SLM_SFT])
    # An adapter role loads no checkpoint of its own: it is --slm's model plus the adapter.
    checkpoint_roles = (roles - {SLM_SFT}) | {SLM} if adapter_role else roles
    loaded, models = {}, {}
    for role in sorted(checkpoint_roles):
        spec = specs[role]
        if spec not in loaded:
            loaded[spec] = load_model_cached(spec, FLAGS.dtype, FLAGS.params_cache, mesh=mesh)
            if mesh is not None:
                from costeer_jax import sharding

                for note in sharding.sharding_notes(loaded[spec].params, loaded[spec].cfg, mesh, FLAGS.batch_size):
                    print(f"sharding: {spec}: {note}", file=sys.stderr)
        models[role] = loaded[spec]
    if adapter_role:
        base = models[SLM]
        adapter = lora.load_adapter(specs[SLM_SFT], base.cfg, base.params["embed"].dtype)
        models[SLM_SFT] = dataclasses.replace(base, name=specs[SLM_SFT], adapter=adapter)
    return models


def speculative_options(method_name: str):
    from costeer_jax.decoding.methods import SPECULATIVE_METHOD_NAMES, SpeculativeOptions

    if method_name == "specsteer_cross":
        if FLAGS.K < 1:
            raise app.UsageError("--K must be >= 1")
        return SpeculativeOptions(num_draft=FLAGS.K)
    if method_name not in SPECULATIVE_METHOD_NAMES:
        return None
    if FLAGS.K < 1 or FLAGS.downlink_topk < 0:
        raise app.UsageError("--K must be >= 1 and --downlink_topk >= 0")
    drafter = {}
    if fine_tuned_spec():
        plus = "sft_w" if FLAGS.slm_plus_context else "sft_wo"
        drafter = {"specsteer_drafter": plus} if method_name == "specsteer" else {"sd_drafter": plus}
    return SpeculativeOptions(
        num_draft=FLAGS.K, bonus={"auto": None, "on": True, "off": False}[FLAGS.bonus_token],
        acceptance=FLAGS.acceptance, downlink_topk=FLAGS.downlink_topk,
        **{"sd_drafter": FLAGS.sd_drafter, **drafter})


def generator_options() -> dict:
    """Generator keyword arguments from the shared flags."""
    return {"copy_guard": FLAGS.copy_guard, "record_cloud_view": FLAGS.record_cloud_view}


def static_config(generator, method_name: str) -> dict:
    """Compile-time settings and the data protocol recorded in each row's `config` (beside the
    per-row hyperparameters), where they are not the defaults: evaluate.py reads the same
    examples back from them."""
    config = {"copy_guard": generator.copy_guard} if generator.copy_guard else {}
    config.update({k: getattr(FLAGS, k) for k, default in (("split", "dev"), ("longlamp_setting", "user"),
                                                            ("top_users", None)) if getattr(FLAGS, k) != default})
    if method_name == "ada_costeer" and FLAGS.ada_stop_on_streak:
        config["ada_stop_on_streak"] = True
    context = context_options()
    if not context.is_default:
        config.update(context.as_config())
    if generator.method.cross_spec is not None:
        config["K"] = generator.method.cross_spec.num_draft
    if generator.spec is not None:
        config.update(K=generator.spec.num_draft, bonus_token=generator.spec.bonus,
                      threshold_acceptance=generator.spec.threshold_acceptance,
                      downlink_topk=generator.spec.downlink_topk)
        if method_name == "sd":
            config["sd_drafter"] = generator.method.speculative.sd_drafter
    if fine_tuned_spec() and (method_name in ("sft", "proxy_tuning") or generator.spec is not None):
        config["slm_sft"] = fine_tuned_spec()
        if generator.spec is not None:
            config["slm_plus_context"] = FLAGS.slm_plus_context
    return config
