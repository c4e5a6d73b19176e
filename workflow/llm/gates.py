"""iLoRA's expert showcase: the gate weights a trained iLoRA run gives the first test samples.

The gate of a sample is softmax(router(s)), s its SASRec sequence representation (or the `random`
gate's fixed vector): it depends on the router alone, so no LLM is loaded. Output: a Parquet
(sample_id, user_id, expert, weight) and a heat map, one row per sample (the paper's figure of expert
weights differing across sequences), with each sample's history titles as the row label.

    python -m workflow.llm.gates --adapter .../ilora-open-n256/random/adapter --surrogate .../surrogate \
        --samples .../samples.parquet --items .../items.parquet --n-samples 10 --out-parquet ... --out-png ...
"""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow import cli
from workflow.io import atomic_path, write_parquet
from workflow.llm import ilora, llara
from workflow.methods import gate_reads_inputs

log = logging.getLogger(__name__)


def gate_weights(adapter: str | Path, surrogate: str | Path, samples: pd.DataFrame) -> np.ndarray:
    """[N, n_experts] gate weights of the samples under the adapter's router."""
    from safetensors.torch import load_file

    cfg = json.loads((Path(adapter) / llara.HYBRID_FILE).read_text())
    if cfg.get("method") != "ilora":
        raise ValueError(f"{adapter}: not an ilora adapter ({llara.HYBRID_FILE} says {cfg.get('method')!r})")
    ids = samples["sample_id"].astype(str).tolist()
    inputs = llara.gate_inputs(cfg["gate"], surrogate, ids, cfg["d"])
    router = None
    if gate_reads_inputs(cfg["gate"]):
        router = ilora.build_router(cfg["router"], cfg["d"], cfg["n_experts"])
        router.load_state_dict(load_file(Path(adapter) / "router.safetensors"))
        router.eval()
    with torch.no_grad():
        weights = ilora.gate_weights(router, None if inputs is None else torch.from_numpy(inputs),
                                     cfg["n_experts"], len(ids))
    return weights.numpy()


def heat_map(weights: np.ndarray, labels: list[str], title: str, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0 + 0.6 * weights.shape[1], 1.2 + 0.45 * len(labels)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6), aspect="auto")
    for (r, c), w in np.ndenumerate(weights):
        ax.text(c, r, f"{w:.2f}", ha="center", va="center", fontsize=7,
                color="white" if w < 0.6 * weights.max() else "black")
    ax.set_xticks(range(weights.shape[1]), [str(k + 1) for k in range(weights.shape[1])])
    ax.set_xlabel("expert")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    p = cli.parser("Gate weights of a trained iLoRA run for the first test samples (table and heat map).")
    p.add_argument("--adapter", required=True)
    p.add_argument("--surrogate", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--title", default="iLoRA gate weights")
    p.add_argument("--out-parquet", required=True)
    p.add_argument("--out-png", required=True)

    def run(args):
        samples = pd.read_parquet(args.samples)
        test = samples[samples["split"] == "test"].head(args.n_samples).reset_index(drop=True)
        if test.empty:
            raise ValueError(f"{args.samples}: no test samples")
        weights = gate_weights(args.adapter, args.surrogate, test)
        titles = dict(zip(*pd.read_parquet(args.items, columns=["item_id", "title"]).astype(str).T.values))
        labels = [textwrap.shorten(" / ".join(titles.get(str(i), str(i)) for i in h[-2:]), 48)
                  for h in test["history"]]
        n = weights.shape[1]
        table = pd.DataFrame({"sample_id": np.repeat(test["sample_id"].astype(str).to_numpy(), n),
                              "user_id": np.repeat(test["user_id"].astype(str).to_numpy(), n),
                              "expert": np.tile(np.arange(1, n + 1), len(test)), "weight": weights.reshape(-1)})
        write_parquet(table, args.out_parquet, adapter=str(args.adapter))
        heat_map(weights, labels, args.title, args.out_png)
        spread = weights.std(axis=0).mean()
        log.info("%d samples, %d experts: mean weight per expert %s, mean std across samples %.4f", len(test), n,
                 np.round(weights.mean(axis=0), 3).tolist(), spread)

    return cli.run(run, p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
