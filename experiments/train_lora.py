"""LoRA fine-tuning of an SLM for the SFT / proxy-tuning / SpecSteer-LoRA baselines.

  python experiments/train_lora.py --model=smollm2-135m-instruct --recipe=costeer_sft --task=cogenesis \
      --exclude_first=24 --num_samples=200 --epochs=3 --output_dir=outputs/lora/smollm2_cogenesis
  python experiments/generate.py --method=sft --slm=smollm2-135m-instruct \
      --slm_sft=outputs/lora/smollm2_cogenesis/adapter --task=cogenesis --limit=24 --output=...

Recipes: costeer_sft (CoSteer B.8: N random rows, personalized prompt -> reference; the first
--exclude_first rows, the ones an evaluation with --limit decodes, are never trained on) and
specsteer_history (SpecSteer B.3/B.5: each user's profile entries minus the 10 held out, as task
prompt -> entry output). Rerunning the same command resumes from the last checkpoint in
--output_dir; the adapter lands in OUTPUT_DIR/adapter (peft's format), beside metrics.jsonl,
loss_curve.png and training_config.json. The last stdout line is one JSON object of figures.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.models.lora import PEFT_MODULES  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "smollm2-135m-instruct", "Base SLM: registered alias, HF directory or GGUF file.")
flags.DEFINE_enum("recipe", "costeer_sft", ["costeer_sft", "specsteer_history"], "Training set (see module doc).")
flags.DEFINE_string("task", "cogenesis", "Task whose rows (costeer_sft) or profiles (specsteer_history) are used.")
flags.DEFINE_string("data_dir", None, "Dataset folder (default: ../shared/data/costeer_release).")
flags.DEFINE_string("prompts_file", None, "costeer_sft from your own rows instead of --task: jsonl "
                    '{"id", "input", "personalized_input", "output"}.')
flags.DEFINE_integer("num_samples", 1000, "costeer_sft: random rows (CoSteer B.8: 1,000; capped by the file).")
flags.DEFINE_integer("exclude_first", 24, "costeer_sft: the first N rows are reserved for evaluation.")
flags.DEFINE_float("held_out_fraction", 0.1, "Share of the training rows kept for the held-out loss curve.")
flags.DEFINE_integer("rank", 64, "LoRA rank r.")
flags.DEFINE_float("alpha", 32.0, "LoRA alpha (scale alpha/r).")
flags.DEFINE_float("dropout", 0.05, "LoRA dropout on each module's input.")
flags.DEFINE_list("targets", list(PEFT_MODULES), "Adapted modules (peft names).")
flags.DEFINE_float("learning_rate", 1e-4, "Peak learning rate (cosine decay to 0).")
flags.DEFINE_float("warmup_ratio", 0.03, "Linear warmup share of the steps.")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_float("grad_clip", 1.0, "Global gradient-norm clip.")
flags.DEFINE_integer("epochs", 3, "Epochs (CoSteer B.8: 3; SpecSteer B.5: 5).")
flags.DEFINE_integer("rows_per_batch", 4, "Packed rows per step.")
flags.DEFINE_integer("max_len", 1024, "Tokens per packed row (and per example, right-truncated).")
flags.DEFINE_integer("seed", 0, "Seed of sampling, shuffling, init and dropout.")
flags.DEFINE_integer("save_every", 50, "Checkpoint every N steps (and at the end or on Ctrl-C).")
flags.DEFINE_integer("eval_every", 50, "Held-out loss every N steps.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Base weights' dtype; bfloat16 runs the "
                  "matmuls on bf16 operands (fp32 accumulation, fp32 activations and adapter masters), the "
                  "papers' recipe and ~1.5x faster on a CPU with bf16 units.")
flags.DEFINE_enum("remat_layers", "auto", ["auto", "on", "off"], "Recompute each layer in the backward "
                  "instead of keeping its activations (~1/6 the memory, ~+8% step time). auto: on when the "
                  "estimated activations exceed a third of the RAM (Qwen2.5-0.5B at 4 x 1024 tokens: ~17 GB).")
flags.DEFINE_string("mesh", None, "Data-parallel mesh, e.g. data:8.")
flags.DEFINE_string("output_dir", None, "Run folder (resumable).")
flags.DEFINE_bool("progress", True, "tqdm progress bar on stderr.")


def main(argv):
    del argv
    from costeer_jax import sharding
    from costeer_jax.data.tasks import default_data_dir, load_prompts_file, load_task
    from costeer_jax.models import lora
    from costeer_jax.models.chat import eos_token_ids
    from costeer_jax.models.params_cache import load_model_cached
    from costeer_jax.training import sft_data
    from costeer_jax.training.lora_trainer import TrainConfig, train

    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (the run folder; rerun to resume)")
    config = TrainConfig(
        lora=lora.LoraConfig(FLAGS.rank, FLAGS.alpha, FLAGS.dropout, tuple(FLAGS.targets)),
        learning_rate=FLAGS.learning_rate, warmup_ratio=FLAGS.warmup_ratio, weight_decay=FLAGS.weight_decay,
        grad_clip=FLAGS.grad_clip, epochs=FLAGS.epochs, rows_per_batch=FLAGS.rows_per_batch,
        max_len=FLAGS.max_len, seed=FLAGS.seed, save_every=FLAGS.save_every, eval_every=FLAGS.eval_every,
        remat_layers={"auto": None, "on": True, "off": False}[FLAGS.remat_layers])
    if FLAGS.recipe == "costeer_sft":
        if FLAGS.num_samples < 1 or FLAGS.exclude_first < 0:
            raise app.UsageError("--num_samples must be >= 1 and --exclude_first >= 0")
        examples = load_prompts_file(FLAGS.prompts_file) if FLAGS.prompts_file else load_task(FLAGS.task, FLAGS.data_dir)
        excluded = [e.id for e in examples[:FLAGS.exclude_first]]
        rows = sft_data.costeer_sft_rows(examples, FLAGS.num_samples, FLAGS.seed, excluded)
    else:
        data_dir = FLAGS.data_dir or default_data_dir()
        if data_dir is None:
            raise FileNotFoundError("pass --data_dir with the CoSteer release files (longlamp_*.jsonl)")
        rows = sft_data.specsteer_history_rows(FLAGS.task, data_dir)
    train_rows, eval_rows = sft_data.split_held_out(rows, FLAGS.held_out_fraction, FLAGS.seed)
    mesh = sharding.make_mesh(FLAGS.mesh) if FLAGS.mesh else None
    t0 = time.perf_counter()
    model = load_model_cached(FLAGS.model, FLAGS.dtype)
    load_seconds = time.perf_counter() - t0
    end_of_turn = eos_token_ids(model.tokenizer, model.generation_eos)[0]
    train_set, dropped_train = sft_data.tokenize_rows(train_rows, model.tokenizer, end_of_turn, FLAGS.max_len)
    eval_set, dropped_eval = sft_data.tokenize_rows(eval_rows, model.tokenizer, end_of_turn, FLAGS.max_len)
    run_config = {"recipe": FLAGS.recipe, "task": None if FLAGS.prompts_file else FLAGS.task,
                  "prompts_file": FLAGS.prompts_file, "dtype": FLAGS.dtype, "mesh": FLAGS.mesh,
                  "train_ids": [r.id for r in train_rows], "eval_ids": [r.id for r in eval_rows],
                  "dropped_too_long": dropped_train + dropped_eval}
    result = train(model.params, model.cfg, train_set, eval_set, config, FLAGS.output_dir,
                   base_model_name=FLAGS.model, run_config=run_config, mesh=mesh, progress=FLAGS.progress)
    print(json.dumps({"output_dir": str(result.output_dir), "adapter": str(result.output_dir / "adapter"),
                      "steps": result.steps, "resumed_from": result.resumed_from,
                      "train_examples": len(train_set), "eval_examples": len(eval_set),
                      "first_eval_loss": None if result.first_eval_loss is None else round(result.first_eval_loss, 4),
                      "final_eval_loss": None if result.final_eval_loss is None else round(result.final_eval_loss, 4),
                      "train_tokens_per_s": round(result.tokens_per_s, 1), "load_seconds": round(load_seconds, 2)}))


if __name__ == "__main__":
    from costeer_jax.process_env import ensure_hugepage_malloc

    ensure_hugepage_malloc()
    from costeer_jax.cli import run

    run(main)
