"""Edge-cloud latency model (costeer_jax/costs/latency.py): the shape of CoSteer Table 13 and
SpecSteer Table 4 for the papers' pairs at a stated network, the RTT at which each token-loop
method falls to half of vanilla speed, SpecSteer's and SD's break-even acceptance, and plots.

  .venv/bin/python experiments/latency.py --network=lan --output_dir=outputs/latency
  .venv/bin/python experiments/latency.py --network=wan --edge=laptop-M2

Compute times are roofline bounds of the named devices (weights read once per step, or FLOPs
over peak) unless --llm_step_ms / --slm_step_ms give measured ones.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.costs import latency  # noqa: E402
from costeer_jax.costs.flops import PAPER_PAIRS, PRESETS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("network", "lan", sorted(latency.NETWORKS), "Network preset (lan: 1 ms, 1 Gbit/s; wan: 20 ms, "
                  "100/20 Mbit/s down/up).")
flags.DEFINE_float("rtt_ms", None, "Override the preset's round-trip time (ms).")
flags.DEFINE_float("downlink_mbps", None, "Override the preset's downlink (Mbit/s).")
flags.DEFINE_float("uplink_mbps", None, "Override the preset's uplink (Mbit/s).")
flags.DEFINE_enum("cloud", "H100-SXM", sorted(latency.DEVICES), "Cloud device (roofline).")
flags.DEFINE_enum("edge", "RTX-4090", sorted(latency.DEVICES), "Edge device (roofline).")
flags.DEFINE_integer("K", 4, "SpecSteer/SD draft tokens per iteration (the paper does not state its K).")
flags.DEFINE_integer("context", 512, "Cached positions a decode step attends to.")
flags.DEFINE_integer("downlink_topk", 0, "CoSteer: send the LLM's top-k logits instead of all V (0: all).")
flags.DEFINE_float("llm_step_ms", None, "Measured LLM step (ms) instead of the roofline (also sets verify).")
flags.DEFINE_float("slm_step_ms", None, "Measured SLM step (ms) instead of the roofline.")
flags.DEFINE_string("output_dir", None, "Write latency.json and the plots here.")


def network() -> latency.Network:
    preset = latency.NETWORKS[FLAGS.network]
    changes = {}
    if FLAGS.rtt_ms is not None:
        changes["rtt_s"] = FLAGS.rtt_ms / 1e3
    if FLAGS.downlink_mbps is not None:
        changes["downlink_bits_per_s"] = FLAGS.downlink_mbps * 1e6
    if FLAGS.uplink_mbps is not None:
        changes["uplink_bits_per_s"] = FLAGS.uplink_mbps * 1e6
    if any(v <= 0 for k, v in changes.items() if k != "rtt_s") or changes.get("rtt_s", 0) < 0:
        raise app.UsageError("--rtt_ms must be >= 0 and the bandwidths > 0")
    return dataclasses.replace(preset, **changes)


def step_times(pair: str) -> latency.StepTimes:
    llm, slm = (PRESETS[name] for name in PAPER_PAIRS[pair])
    times = latency.StepTimes.roofline(llm, slm, latency.DEVICES[FLAGS.cloud], latency.DEVICES[FLAGS.edge],
                                       FLAGS.K, FLAGS.context)
    if FLAGS.llm_step_ms is not None:
        times = dataclasses.replace(times, llm_step=FLAGS.llm_step_ms / 1e3, llm_verify=FLAGS.llm_step_ms / 1e3)
    if FLAGS.slm_step_ms is not None:
        s = FLAGS.slm_step_ms / 1e3
        times = dataclasses.replace(times, slm_step=s, slm_pair_step=s, slm_verify=s)
    return times


def table_markdown(rows: list[dict]) -> str:
    lines = ["| method | paper tok/s | paper ratio | model ratio | L ms | T ms | C ms | E ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['paper_tokens_per_s']:.2f} | {r['paper_ratio']:.2f}x | {r['model_ratio']:.2f}x "
                     f"| {r['model_L_ms']:.2f} | {r['model_T_ms']:.2f} | {r['model_C_ms']:.3f} | {r['model_E_ms']:.2f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    net = network()
    report = {"network": dataclasses.asdict(net), "cloud": FLAGS.cloud, "edge": FLAGS.edge, "K": FLAGS.K,
              "context": FLAGS.context, "tables": {}, "answers": {}}
    print(f"network: RTT {net.rtt_s * 1e3:g} ms, down {net.downlink_bits_per_s / 1e6:g} Mbit/s, "
          f"up {net.uplink_bits_per_s / 1e6:g} Mbit/s; cloud {FLAGS.cloud}, edge {FLAGS.edge} (roofline), K={FLAGS.K}")
    for name, table in (("costeer_table13", latency.COSTEER_TABLE13), ("specsteer_table4", latency.SPECSTEER_TABLE4)):
        pair = table[0]
        times = step_times(pair)
        rows = latency.paper_table(table, times, net, **({"downlink_topk": FLAGS.downlink_topk}
                                                         if FLAGS.downlink_topk else {}))
        report["tables"][name] = {"pair": pair, "step_times": dataclasses.asdict(times), "rows": rows}
        print(f"\n{name} ({pair}; LLM step {times.llm_step * 1e3:.2f} ms, SLM step {times.slm_step * 1e3:.2f} ms)")
        print(table_markdown(rows))
        answers = {m: latency.rtt_at_speed_ratio(m, times, net, 0.5, **kw) for m, kw in
                   (("costeer", {}), ("light_costeer", {}), ("ada_costeer", {"steered_fraction": 0.3}))}
        answers.update({f"breakeven_acceptance_{m}": latency.breakeven_acceptance(m, times, net, num_draft=FLAGS.K)
                        for m in ("specsteer", "sd")})
        report["answers"][pair] = answers
        for method in ("costeer", "light_costeer", "ada_costeer"):
            rtt = answers[method]
            print(f"  {method}: half of vanilla speed at RTT "
                  + ("never (slower at RTT 0)" if rtt is None else f"{rtt * 1e3:.2f} ms"))
        for method in ("specsteer", "sd"):
            even = answers[f"breakeven_acceptance_{method}"]
            print(f"  {method} K={FLAGS.K}: breaks even at acceptance "
                  + ("never" if even is None else f"{even:.3f}"))
        if FLAGS.output_dir:
            from costeer_jax.costs.plots import plot_speed_vs_rtt, plot_speedup_vs_acceptance

            out = Path(FLAGS.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            tag = pair.replace("/", "_")
            title = f"{pair}, {FLAGS.cloud} cloud, {FLAGS.edge} edge"
            plot_speed_vs_rtt(times, net, [("costeer", {}), ("light_costeer", {}),
                                           ("ada_costeer (30% steered)", {"method": "ada_costeer", "steered_fraction": 0.3}),
                                           ("specsteer (acc 0.56)", {"method": "specsteer", "acceptance": 0.56,
                                                                     "num_draft": FLAGS.K})],
                              out / f"speed_vs_rtt_{tag}.png", title=title)
            plot_speedup_vs_acceptance(times, net, [("specsteer", {"num_draft": FLAGS.K}), ("sd", {"num_draft": FLAGS.K})],
                                       out / f"speedup_vs_acceptance_{tag}.png", title=f"{title}, RTT {net.rtt_s * 1e3:g} ms")
    if FLAGS.output_dir:
        (Path(FLAGS.output_dir) / "latency.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["answers"]))


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
