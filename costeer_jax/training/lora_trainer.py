"""LoRA supervised fine-tuning with optax: a jitted train step over the adapter pytree.

The base params are a jit argument that is never differentiated nor copied: gradients exist
only for the adapter (models/lora.py). One run:
  - AdamW with linear warmup then cosine decay to 0, weight decay, global-norm clipping;
  - the loss is the mean negative log-likelihood of response tokens over a packed batch
    (training/packing.py), the vocabulary projection done in chunks under `jax.checkpoint`
    so [rows, length, vocab] logits never exist at once;
  - LoRA dropout keys are fold_in(seed, step) and an epoch's batches are a pure function of
    (seed, epoch), so a run resumed from its orbax checkpoint takes exactly the steps an
    uninterrupted run takes, and ends with the same adapter;
  - data parallel over a mesh's `data` axis (batch rows sharded, params replicated).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from costeer_jax.models import lora
from costeer_jax.models.config import DecoderConfig
from costeer_jax.models.decoder import accumulation_dtype, frozen_einsum, output_head, packed_hidden, stack_layers
from costeer_jax.training.packing import PackedBatch, TokenizedExample, epoch_batches, loss_capacity

LOSS_CHUNK = 256  # positions per vocabulary-projection chunk of the loss


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Defaults: CoSteer B.8 (lr 1e-4 cosine, weight decay 0.05, max length 1024, 3 epochs) with
    SpecSteer B.5's adapter shape (r 64, alpha 32, dropout 0.05, all seven modules)."""

    lora: lora.LoraConfig = lora.LoraConfig()
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    epochs: int = 3
    rows_per_batch: int = 4
    max_len: int = 1024
    seed: int = 0
    save_every: int = 50
    eval_every: int = 50
    # Recompute each layer in the backward instead of keeping its activations (~1/6 the memory,
    # ~+8% step time on SmolLM2); None: on when activation_bytes() exceeds a third of the RAM.
    remat_layers: bool | None = None

    def __post_init__(self):
        checks = [(self.learning_rate > 0, "learning_rate must be > 0"),
                  (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (self.grad_clip > 0, "grad_clip must be > 0"),
                  (self.epochs >= 1, "epochs must be >= 1"),
                  (self.rows_per_batch >= 1, "rows_per_batch must be >= 1"),
                  (self.max_len >= 16, "max_len must be >= 16"),
                  (self.save_every >= 1 and self.eval_every >= 1, "save_every and eval_every must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["lora"] = dataclasses.asdict(self.lora)
        out["lora"]["targets"] = list(self.lora.targets)
        return out


def activation_bytes(cfg: DecoderConfig, rows: int, length: int) -> int:
    """Estimated activations a train step keeps for its backward without remat_layers: ~4 (11 D + 4 F)
    bytes per token per layer, fitted to XLA's temp sizes at 4 x 1024 tokens (SmolLM2 6.33 GB;
    BUILD_NOTES.md, LoRA training speed)."""
    return rows * length * cfg.num_layers * 4 * (11 * cfg.hidden_size + 4 * cfg.intermediate_size)


def choose_remat(config: TrainConfig, cfg: DecoderConfig) -> bool:
    if config.remat_layers is not None:
        return config.remat_layers
    import psutil

    return activation_bytes(cfg, config.rows_per_batch, config.max_len) > psutil.virtual_memory().total / 3


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = int(round(config.warmup_ratio * total_steps))
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(learning_rate_schedule(config, total_steps), weight_decay=config.weight_decay))


LOSS_LOGITS_BYTES = 1 << 29  # above this, logits chunks are recomputed in the backward instead of kept


def _chunked_nll(hidden: jax.Array, head: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """sum of weights * -log p(target) with the [*, V] logits built LOSS_CHUNK positions at a time;
    the chunks' logits are kept for the backward while they fit in LOSS_LOGITS_BYTES, else each
    chunk is rematerialized (jax.checkpoint)."""
    r, length, d = hidden.shape
    chunk = min(LOSS_CHUNK, length)
    pad = -length % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights))
    n = hidden.shape[1] // chunk

    def one(h, t, w):
        logits = frozen_einsum("rld,vd->rlv", accumulation_dtype(head.dtype), h, head)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - picked) * w)

    if r * n * chunk * head.shape[0] * 4 > LOSS_LOGITS_BYTES:
        one = jax.checkpoint(one)

    def body(total, xs):
        return total + one(*xs), None

    xs = (hidden.reshape(r, n, chunk, d).transpose(1, 0, 2, 3), targets.reshape(r, n, chunk).transpose(1, 0, 2),
          weights.reshape(r, n, chunk).transpose(1, 0, 2))
    total, _ = jax.lax.scan(body, jnp.zeros((), accumulation_dtype(hidden.dtype)), xs)
    return total


def batch_nll(adapter: lora.Adapter, base: dict, batch: dict, *, model_cfg: DecoderConfig,
              lora_cfg: lora.LoraConfig, dropout_key: jax.Array | None = None,
              remat_layers: bool = False) -> tuple[jax.Array, jax.Array]:
    """(sum of response-token NLLs, number of response tokens) of a packed batch. With
    `loss_index` in the batch (PackedBatch.as_dict(loss_capacity)) only those positions are
    projected to the vocabulary; the result is the same."""
    dropout = None if dropout_key is None or lora_cfg.dropout == 0 else (lora_cfg.dropout, dropout_key)
    hidden = packed_hidden(base, model_cfg, batch["tokens"], batch["positions"], batch["segment_ids"],
                           lora.single(adapter, lora_cfg), dropout, remat_layers)
    targets, weights = batch["targets"], batch["weights"]
    if "loss_index" in batch:
        index = jnp.maximum(batch["loss_index"], 0)
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index, axis=1)
        weights = jnp.take_along_axis(weights, index, axis=1) * (batch["loss_index"] >= 0)
    total = _chunked_nll(hidden, output_head(base), targets, weights)
    return total, jnp.sum(batch["weights"])


@functools.partial(jax.jit, static_argnames=("model_cfg", "lora_cfg", "optimizer", "remat_layers"),
                   donate_argnames=("state",))
def train_step(state: dict, base: dict, batch: dict, seed_key: jax.Array, *, model_cfg: DecoderConfig,
               lora_cfg: lora.LoraConfig, optimizer: optax.GradientTransformation, remat_layers: bool = False):
    """One optimizer step; state = {"adapter", "opt_state", "step"}. Returns (state, metrics)."""
    key = jax.random.fold_in(seed_key, state["step"])

    def loss_fn(adapter):
        total, count = batch_nll(adapter, base, batch, model_cfg=model_cfg, lora_cfg=lora_cfg, dropout_key=key,
                                 remat_layers=remat_layers)
        return total / jnp.maximum(count, 1.0), count

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["adapter"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["adapter"])
    adapter = optax.apply_updates(state["adapter"], updates)
    metrics = {"loss": loss, "target_tokens": count, "grad_norm": optax.global_norm(grads)}
    return {"adapter": adapter, "opt_state": opt_state, "step": state["step"] + 1}, metrics


@functools.partial(jax.jit, static_argnames=("model_cfg", "lora_cfg"))
def eval_nll(adapter, base, batch, *, model_cfg, lora_cfg):
    return batch_nll(adapter, base, batch, model_cfg=model_cfg, lora_cfg=lora_cfg)


def init_state(model_cfg: DecoderConfig, config: TrainConfig, optimizer) -> dict:
    adapter = lora.init_adapter(jax.random.key(config.seed), model_cfg, config.lora)
    return {"adapter": adapter, "opt_state": optimizer.init(adapter), "step": jnp.int32(0)}


class StepPlan:
    """Global step -> (epoch, packed batch); epochs may pack into different batch counts. Every
    epoch is packed once up front (the counts fix the schedule's length anyway)."""

    def __init__(self, examples: Sequence[TokenizedExample], config: TrainConfig):
        self.epochs = [epoch_batches(examples, config.max_len, config.rows_per_batch, config.seed, e)
                       for e in range(config.epochs)]
        self.total = sum(len(batches) for batches in self.epochs)
        self.loss_capacity = loss_capacity([b for batches in self.epochs for b in batches])

    def batch(self, step: int) -> tuple[int, PackedBatch]:
        epoch = 0
        while step >= len(self.epochs[epoch]):
            step -= len(self.epochs[epoch])
            epoch += 1
        return epoch, self.epochs[epoch][step]

    def arrays(self, step: int) -> tuple[int, PackedBatch, dict]:
        """(epoch, batch, the step's input arrays)."""
        epoch, batch = self.batch(step)
        return epoch, batch, batch.as_dict(self.loss_capacity)


def _place(tree, mesh, batch: bool):
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    from jax.sharding import NamedSharding, PartitionSpec as P

    spec = P("data") if batch else P()
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec)), tree)


def place_state(state: dict, mesh=None) -> dict:
    """The train state committed where the step's outputs will be: an uncommitted first state
    (fresh from init) and the committed states the step returns are two jit signatures, which
    made the second step compile the whole program again (measured: 77 s on SmolLM2)."""
    if mesh is None:
        return jax.device_put(state, jax.devices()[0])
    return _place(state, mesh, False)


def check_training_mesh(mesh, rows_per_batch: int) -> None:
    if mesh is None:
        return
    from costeer_jax.sharding import DATA, mesh_axis_sizes

    sizes = mesh_axis_sizes(mesh)
    if any(size > 1 for name, size in sizes.items() if name != DATA):
        raise ValueError(f"training is data parallel: use --mesh=data:N (got axes {sizes})")
    if rows_per_batch % sizes[DATA]:
        raise ValueError(f"--rows_per_batch={rows_per_batch} must be a multiple of the mesh's data axis "
                         f"({sizes[DATA]})")


def evaluate_loss(adapter, base, batches: Sequence[PackedBatch], model_cfg, config: TrainConfig, mesh=None) -> float:
    """Mean NLL per response token over packed held-out batches (no dropout)."""
    total, count = 0.0, 0.0
    capacity = loss_capacity(batches)
    for batch in batches:
        t, c = eval_nll(adapter, base, _place(batch.as_dict(capacity), mesh, True), model_cfg=model_cfg,
                        lora_cfg=config.lora)
        total, count = total + float(t), count + float(c)
    return total / max(count, 1.0)


@dataclasses.dataclass
class TrainResult:
    adapter: lora.Adapter
    steps: int
    resumed_from: int
    final_eval_loss: float | None  # None without held-out rows
    first_eval_loss: float | None
    tokens_per_s: float
    output_dir: Path


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """metrics.jsonl rows up to a restored step (later ones belong to work the checkpoint lost)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= up_to_step:
                rows.append(row)
    return rows


def train(base: dict, model_cfg: DecoderConfig, train_examples: Sequence[TokenizedExample],
          eval_examples: Sequence[TokenizedExample], config: TrainConfig, output_dir: str | Path, *,
          base_model_name: str, run_config: dict | None = None, mesh=None, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Trains (or resumes) a LoRA adapter into output_dir:
      checkpoints/  orbax train states (the latest two), resumed automatically
      metrics.jsonl one row per step (loss, lr, tokens/s) and per evaluation
      adapter/      the final adapter in peft's format (models/lora.save_adapter)
      training_config.json, loss_curve.png
    stop_after=N stops after global step N with a checkpoint (tests simulate a kill with it)."""
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    if not train_examples:
        raise ValueError("no training examples (all were empty or longer than max_len)")
    check_training_mesh(mesh, config.rows_per_batch)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = StepPlan(train_examples, config)
    eval_batches = epoch_batches(eval_examples, config.max_len, config.rows_per_batch, config.seed, 0)
    optimizer = make_optimizer(config, plan.total)
    schedule_lr = learning_rate_schedule(config, plan.total)
    remat = choose_remat(config, model_cfg)
    (output_dir / "training_config.json").write_text(json.dumps(
        {"train": config.as_dict(), "base_model": base_model_name, "total_steps": plan.total, "remat_layers": remat,
         "train_examples": len(train_examples), "eval_examples": len(eval_examples), **(run_config or {})}, indent=2))

    manager = ocp.CheckpointManager(output_dir / "checkpoints",
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    state = init_state(model_cfg, config, optimizer)
    resumed_from = 0
    if manager.latest_step() is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
        resumed_from = int(state["step"])
    metrics_path = output_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path, resumed_from)
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))

    # The step scans the layers over stacked weights: stack once here, not inside every step.
    base = _place(stack_layers(base), mesh, False)
    state = place_state(state, mesh)
    seed_key = jax.random.key(config.seed)
    step_kw = dict(model_cfg=model_cfg, lora_cfg=config.lora, optimizer=optimizer, remat_layers=remat)
    first_eval = next((r["eval_loss"] for r in history if "eval_loss" in r), None)
    if first_eval is None and eval_examples:
        first_eval = evaluate_loss(state["adapter"], base, eval_batches, model_cfg, config, mesh)
        history.append({"step": 0, "eval_loss": first_eval})
        with open(metrics_path, "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
    last_stop = plan.total if stop_after is None else min(plan.total, stop_after)
    bar = tqdm(total=plan.total, initial=resumed_from, desc="lora", unit="step", file=sys.stderr,
               disable=not progress)
    tokens_done, seconds = 0, 0.0
    step = resumed_from

    def save(step_number: int):
        manager.save(step_number, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()

    try:
        with open(metrics_path, "a") as log:
            while step < last_stop:
                epoch, batch, arrays = plan.arrays(step)
                t0 = time.perf_counter()
                state, metrics = train_step(state, base, _place(arrays, mesh, True), seed_key, **step_kw)
                metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                step += 1
                tokens = int((batch.segment_ids > 0).sum())
                if step > resumed_from + 1:  # the first step of a process includes compilation
                    tokens_done, seconds = tokens_done + tokens, seconds + dt
                row = {"step": step, "epoch": epoch, "loss": round(float(metrics["loss"]), 6),
                       "grad_norm": round(float(metrics["grad_norm"]), 6),
                       "lr": float(schedule_lr(step - 1)), "tokens": tokens, "seconds": round(dt, 4)}
                if eval_examples and (step % config.eval_every == 0 or step == plan.total):
                    row["eval_loss"] = evaluate_loss(state["adapter"], base, eval_batches, model_cfg, config, mesh)
                log.write(json.dumps(row) + "\n")
                log.flush()
                history.append(row)
                if step % config.save_every == 0 or step == last_stop:
                    save(step)
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tokens_done / seconds:.0f}" if seconds else "-")
                bar.update(1)
    except KeyboardInterrupt:
        if int(jax.device_get(state["step"])) > (manager.latest_step() or 0):
            save(int(jax.device_get(state["step"])))
        print(f"interrupted at step {step}; rerun the same command to resume", file=sys.stderr)
        raise
    finally:
        bar.close()
    adapter = jax.device_get(state["adapter"])
    if step == plan.total:
        lora.save_adapter(output_dir / "adapter", adapter, config.lora, base_model_name, model_cfg)
        # The run's config travels with the adapter (a copied adapter folder still says how it was made).
        (output_dir / "adapter" / "training_config.json").write_text((output_dir / "training_config.json").read_text())
        _plot(history, output_dir / "loss_curve.png")
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    return TrainResult(adapter, step, resumed_from, evals[-1] if evals else None, first_eval,
                       tokens_done / seconds if seconds else 0.0, output_dir)


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows = [r for r in history if "loss" in r]
    eval_rows = [r for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train (batch)", alpha=0.6)
    ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL per response token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
