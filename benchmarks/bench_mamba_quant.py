"""Mamba W8A8 golden vs float on real text (issue "Mamba on the accelerator", item 2).

Trains a small ``MambaForCausalLM`` (hidden 96, 2 layers, state 16, expand 2) and a byte-level
BPE tokenizer of 512 tokens on the English text of the Python documentation that ships with
Python (``pydoc_data.topics``, every eighth topic held out), saves it with ``save_pretrained``,
reads it back through hwflow's Mamba frontend (``compiler.ssm_frontend.load_mamba``: the ATen
graph recognised and its logits checked), quantizes it (``compiler.ssm_quant``) to W8A8, W4A8
and W4A4, each without and with the rotations (the residual stream's, folded, and the online
Hadamard before the out-projection), and prints the held-out perplexity of the float model and
of each golden integer model, their top-1 agreement and the mean logit cosine.

    python benchmarks/bench_mamba_quant.py              # 400 steps, ~9 min on one core
    python benchmarks/bench_mamba_quant.py --steps 100  # a quicker, less trained model
    python benchmarks/bench_mamba_quant.py --work DIR   # train once into DIR, reuse it after
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB, CONTEXT, BATCH, LR = 512, 64, 16, 3e-3
EVAL_WINDOWS = 16           # held-out windows of CONTEXT tokens: 1008 predicted tokens


def _texts() -> tuple[str, str]:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    held = {k for i, k in enumerate(keys) if i % 8 == 3}
    return ("\n\n".join(topics[k] for k in keys if k not in held),
            "\n\n".join(topics[k] for k in keys if k in held))


def _train(folder: Path, steps: int) -> np.ndarray:
    """Train and save the model; returns the held-out text's token ids."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import MambaConfig, MambaForCausalLM

    train_text, held = _texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([train_text], trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    data = torch.tensor(tok.encode(train_text).ids)
    torch.set_num_threads(1)        # the same sums in the same order on every machine
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=96, state_size=16,
                                         num_hidden_layers=2, expand=2, conv_kernel=4,
                                         use_cache=False))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - CONTEXT, (BATCH,), generator=gen)
        x = torch.stack([data[s:s + CONTEXT] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval().save_pretrained(str(folder))
    return np.array(tok.encode(held).ids)


def _nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``ids[1:]`` under the rows of ``logits`` (float64)."""
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(ids) - 1), ids[1:]]


#: The integer models compared: (name, quantize_mamba's keywords).
CONFIGS = [
    ("W8A8", dict(rotate=False)),
    ("W8A8 + rotation", dict(rotate=True)),
    ("W4A8", dict(rotate=False, wbits=4)),
    ("W4A8 + rotation", dict(rotate=True, wbits=4)),
    ("W4A4", dict(rotate=False, wbits=4, abits=4)),
    ("W4A4 + rotation", dict(rotate=True, wbits=4, abits=4)),
]


def _model(work: Path | None, steps: int) -> tuple[Path, np.ndarray, float]:
    """The trained folder, the held-out ids and the training time (0 when reused)."""
    if work is not None and (work / "held.npy").exists():
        return work / "pydoc-mamba", np.load(work / "held.npy"), 0.0
    t0 = time.time()
    held = _train(work / "pydoc-mamba", steps)
    np.save(work / "held.npy", held)
    return work / "pydoc-mamba", held, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    ap.add_argument("--work", type=Path, help="keep the trained model here and reuse it")
    args = ap.parse_args()
    from hwflow.compiler.ssm_frontend import load_mamba
    from hwflow.compiler.ssm_interpret import mamba_logits
    from hwflow.compiler.ssm_quant import qmamba_logits, quantize_mamba
    from hwflow.golden.metrics import cosine

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folder, held, t_train = _model(work, args.steps)
        fm = load_mamba(folder)
    models = {k: quantize_mamba(fm, **kw) for k, kw in CONFIGS}
    nll = {k: [] for k in ["float", *models]}
    agree = {k: [] for k in models}
    cos = {k: [] for k in models}
    for w in range(EVAL_WINDOWS):
        ids = held[w * CONTEXT:(w + 1) * CONTEXT]
        f = mamba_logits(fm, ids)
        nll["float"] += list(_nll(f, ids))
        for k, qm in models.items():
            q = qmamba_logits(qm, ids).astype(np.float64) * qm.scales["logits"]
            nll[k] += list(_nll(q, ids))
            agree[k] += list(f.argmax(-1) == q.argmax(-1))
            cos[k] += [cosine(a, b) for a, b in zip(f, q, strict=True)]
    s = fm.shape
    trained = f"trained {args.steps} steps in {t_train:.0f} s" if t_train else \
        f"reused from {folder}"
    print(f"Mamba hidden {s.hidden}, {s.layers} layers, d_inner {s.d_inner}, state "
          f"{s.d_state}, vocab {s.vocab}: {trained}; {len(nll['float'])} held-out tokens")
    ppl = {k: float(np.exp(np.mean(v))) for k, v in nll.items()}
    print(f"  float perplexity {ppl['float']:.3f}")
    for k in models:
        print(f"  {k:16s} golden perplexity {ppl[k]:.3f} ({ppl[k] / ppl['float'] - 1:+.1%}), "
              f"top-1 agreement {np.mean(agree[k]):.3f}, logit cosine {np.mean(cos[k]):.4f}")


if __name__ == "__main__":
    main()
