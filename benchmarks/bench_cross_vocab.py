"""CoSteer across tokenizers: our jitted costeer_map / costeer_byte against the authors' way (the
NumPy host transcription, steering/cross_vocab_host.py: one example at a time, no KV cache,
transformers' forward over the whole sequence every step), measured in the same run; and the
byte walk's share of a decode step.

  .venv/bin/python benchmarks/bench_cross_vocab.py                      # Qwen2.5-1.5B steered by SmolLM2
  .venv/bin/python benchmarks/bench_cross_vocab.py --llm=smollm2-135m-instruct --slm=qwen2.5-coder-0.5b-instruct

Ours: steady state (compile apart, best of 2) at batch 1 and 8 on the built-in prompts. Host:
--host_examples prompts at --host_tokens tokens each (it is slow), tokens/s per example. The
byte-walk share: `costeer_byte_step` jitted alone on random logits of the pair's widths at the
same batch, over the measured step time of costeer_byte. Prints one JSON object.
"""
from __future__ import annotations

import json
import time

from absl import app, flags

from common import bench_examples, load_pair, machine_note, time_generator

FLAGS = flags.FLAGS
flags.DEFINE_string("llm", "qwen2.5-coder-1.5b-instruct", "Cloud LLM.")
flags.DEFINE_string("slm", "smollm2-135m-instruct", "Edge SLM (another tokenizer).")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes of ours.")
flags.DEFINE_integer("max_new_tokens", 32, "Tokens per example (ours).")
flags.DEFINE_integer("host_examples", 2, "Examples of the host transcription per method.")
flags.DEFINE_integer("host_tokens", 12, "Tokens per example of the host transcription.")
flags.DEFINE_list("methods", ["costeer_map", "costeer_byte", "specsteer_cross"], "Methods.")

HYPER = {"alpha": 2.0, "beta": 1.0, "lam": 2.0, "eta": 10.0, "T": 20, "spec_lambda": 0.5, "spec_beta": 1.0}


def host_throughput(kind: str, pair: dict, alignment, examples) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from costeer_jax.decoding import methods
    from costeer_jax.models.chat import chat_prompt_ids
    from costeer_jax.models.loading import resolve_model
    from costeer_jax.steering.cross_vocab_host import host_decode, host_specsteer_cross

    transformers.utils.logging.disable_progress_bar()
    torch_models = {}
    for role, spec in (("llm", FLAGS.llm), ("slm", FLAGS.slm)):
        source = resolve_model(spec)
        torch_models[role] = AutoModelForCausalLM.from_pretrained(
            source.directory, gguf_file=source.gguf_file, dtype=torch.float32).eval()

    def next_logits(role, ids):
        with torch.no_grad():
            return torch_models[role](torch.tensor([ids]), use_cache=False).logits[0, -1].double().numpy()

    llm_tok, slm_tok = pair[methods.LLM].tokenizer, pair[methods.SLM].tokenizer
    tokens, t0 = 0, time.perf_counter()
    for e in examples:
        prompts = {"llm": chat_prompt_ids(llm_tok, e.query), "slm_wo": chat_prompt_ids(slm_tok, e.query),
                   "slm_w": chat_prompt_ids(slm_tok, e.personalized_query)}
        if kind == "cross":
            encode = lambda text: llm_tok.encode(text, add_special_tokens=False)
            out = host_specsteer_cross(next_logits, alignment, prompts, encode, 4, HYPER["spec_lambda"],
                                       HYPER["spec_beta"], FLAGS.host_tokens)
        else:
            steering = {k: HYPER[k] for k in ("alpha", "beta", "lam", "eta", "T")}
            out = host_decode(kind, next_logits, alignment, prompts, FLAGS.host_tokens, steering)
        tokens += len(out)
    seconds = time.perf_counter() - t0
    del torch_models
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 3)}


def byte_walk_seconds(generator, batch: int) -> float:
    """One costeer_byte_step, jitted alone at this batch on random logits: best of 5."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from costeer_jax.steering import cross_vocab

    bridge = generator.bridge.aux
    rng = np.random.default_rng(0)
    llm = jnp.asarray(3 * rng.standard_normal((batch, bridge.llm.lengths.shape[0])), jnp.float32)
    slm = jnp.asarray(3 * rng.standard_normal((batch, bridge.slm.lengths.shape[0])), jnp.float32)
    hyper = {k: jnp.full((batch,), v, jnp.int32 if k == "T" else jnp.float32) for k, v in HYPER.items()}
    step = jax.jit(lambda a, b, c: cross_vocab.costeer_byte_step(a, b, c, bridge, hyper, 20)[0])
    step(llm, slm, slm + 0.5).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        step(llm, slm, slm + 0.5).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv):
    del argv
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator

    pair = load_pair(FLAGS.llm, FLAGS.slm)
    report = {"llm": FLAGS.llm, "slm": FLAGS.slm, "max_new_tokens": FLAGS.max_new_tokens, "machine": machine_note(),
              "ours": {}, "host": {}, "byte_walk": {}}
    for name in FLAGS.methods:
        for batch in map(int, FLAGS.batches):
            gen = Generator(methods.get_method(name), pair, max_new_tokens=FLAGS.max_new_tokens, batch_size=batch,
                            hyper=HYPER)
            examples = bench_examples(batch)
            figures = time_generator(gen, examples)
            if name == "specsteer_cross":  # one more pass: the share of its host steps in it
                gen.host_seconds, t0 = 0.0, time.perf_counter()
                gen.run_batch(examples)
                figures["host_step_share"] = round(gen.host_seconds / (time.perf_counter() - t0), 3)
            steps = FLAGS.max_new_tokens  # upper bound; rows that end early make the share an underestimate
            figures["step_seconds"] = round(figures["seconds"] / steps, 4)
            report["ours"][f"{name}@{batch}"] = figures
            if name == "costeer_byte":
                walk = byte_walk_seconds(gen, batch)
                report["byte_walk"][f"batch{batch}"] = {"walk_seconds": round(walk, 4),
                                                        "share_of_step": round(walk / figures["step_seconds"], 3)}
            report["alignment"] = gen.alignment.summary(len(pair[methods.LLM].tokenizer),
                                                        len(pair[methods.SLM].tokenizer))
            print(json.dumps({name: {batch: figures}}), flush=True)
        host = host_throughput(name.split("_")[1], pair, gen.alignment, bench_examples(FLAGS.host_examples))
        report["host"][name] = host
        for batch in map(int, FLAGS.batches):
            ours = report["ours"][f"{name}@{batch}"]
            ours["speedup_vs_host"] = round(ours["tokens_per_s"] / host["tokens_per_s"], 2)
        print(json.dumps({name: {"host": host}}), flush=True)
    report["machine_after"] = machine_note()
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
