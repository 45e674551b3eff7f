"""Encoder speed: our embedding path vs sentence-transformers (same model, texts, batch size and
dtype, measured in one run), and fine-tuning throughput / MFU.

    # GPU (H100/H200): 100k mixed-length item descriptions, bf16
    python benchmarks/encoder_gpu.py --device cuda --model .encoder-export/minilm
    # this 2-core CPU: fp32 vs sentence-transformers, plus int8-dynamic speedup and agreement
    python benchmarks/encoder_gpu.py --device cpu --n-texts 3000 --batch-size 64 --name encoder_cpu
    # smoke test (tests/test_benchmarks.py): tiny random encoder
    python benchmarks/encoder_gpu.py --device cpu --tiny --n-texts 64 --finetune-steps 2 --name smoke --out DIR

MFU = achieved training FLOP/s / the device's dense bf16 peak, with FLOPs per token
= 6·N + 12·L·d·T (N non-embedding parameters, L layers, d hidden, T sequence length;
causalrec.text.finetune.train_flops_per_token). Needs torch, transformers, sentence-transformers,
numpy, pandas: nothing else of the project's dependencies.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import scratch_dir, write_result  # noqa: E402
from causalrec.text.encoder import TextEncoder, default_model_path  # noqa: E402
from causalrec.text.finetune import contrastive_loss, train_flops_per_token  # noqa: E402

PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_bf16(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # ordered: the specific variants first
        if key in name:
            return value
    return None


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Item descriptions of mixed length (one to five simulator descriptions joined)."""
    from causalrec.data.simulate import TOPICS, _item_text

    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(int(rng.choice([1, 1, 1, 2, 3, 5]))):
            mix = rng.dirichlet(np.full(len(names), 0.2))
            title, desc, _ = _item_text(rng, mix, float(rng.normal()), names)
            parts.append(f"{title}. {desc}")
        out.append(" ".join(parts))
    return out


def tiny_model(dir_: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(dir_)
    tok.save_pretrained(dir_)
    return dir_


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_embedding(model_path: Path, texts: list[str], batch_size: int, device: str, rounds: int, max_length: int) -> dict:
    from sentence_transformers import SentenceTransformer

    ours = TextEncoder(model_path, batch_size=batch_size, device=device, max_length=max_length, progress=False).load()
    st = SentenceTransformer(str(model_path), device=device)
    st.max_seq_length = max_length
    if ours.torch_device.type == "cuda":
        st = st.to(ours.dtype)  # same dtype on both sides
    dev = ours.torch_device
    warm = texts[: min(len(texts), 4 * batch_size)]
    ours._embed_uncached(warm), st.encode(warm, batch_size=batch_size)
    t_ours, t_st = [], []
    for _ in range(rounds):  # alternate, keep each side's best: robust to noise on a shared machine
        _sync(dev)
        t = time.perf_counter()
        ours_vec = ours._embed_uncached(texts)
        _sync(dev)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        st_vec = st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
        _sync(dev)
        t_st.append(time.perf_counter() - t)
    cos = (ours_vec * st_vec).sum(1) / np.linalg.norm(st_vec, axis=1)
    res = {"texts": len(texts), "batch_size": batch_size, "dtype": str(ours.dtype).replace("torch.", ""),
           "texts_per_s": len(texts) / min(t_ours), "sentence_transformers_texts_per_s": len(texts) / min(t_st),
           "speedup_vs_sentence_transformers": min(t_st) / min(t_ours),
           "cosine_vs_sentence_transformers": {"mean": float(cos.mean()), "min": float(cos.min())},
           "seconds": {"ours": t_ours, "sentence_transformers": t_st}}
    if dev.type == "cpu":
        int8 = TextEncoder(model_path, batch_size=batch_size, device="cpu", max_length=max_length,
                           quantize_int8=True, progress=False).load()
        int8._embed_uncached(warm)
        t = time.perf_counter()
        v8 = int8._embed_uncached(texts)
        t8 = time.perf_counter() - t
        c8 = (v8 * ours_vec).sum(1)
        res["int8"] = {"texts_per_s": len(texts) / t8, "speedup_vs_fp32": min(t_ours) / t8,
                       "cosine_vs_fp32": {"mean": float(c8.mean()), "min": float(c8.min())}}
    return res


def _profile_breakdown(step, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(3):
            step()
        _sync(device)
        wall_us = (time.perf_counter() - t) * 1e6
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if device.type == "cuda" else "CPU")]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    groups = {"attention": ("flash", "fmha", "attention", "sdpa", "efficient"),
              "matmul (GEMM)": ("gemm", "matmul", "cutlass", "sm90_", "sm80_", "addmm", "mm", "nvjet"),
              "optimizer": ("adam", "foreach", "multi_tensor"),
              "norm / softmax / gelu / elementwise": ("norm", "softmax", "gelu", "elementwise", "vectorized", "reduce")}
    shares = dict.fromkeys([*groups, "other"], 0.0)
    for e in events:
        name = e.key.lower()
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        shares[group] += getattr(e, attr) / total
    top = sorted(events, key=lambda e: -getattr(e, attr))[:8]
    return {"time_share": {k: round(v, 3) for k, v in shares.items()},
            # share of wall time the device was running kernels (under the profiler's own overhead)
            "device_busy_fraction": round(total / wall_us, 3) if device.type == "cuda" else None,
            "top_kernels": [{"name": e.key[:90], "share": round(getattr(e, attr) / total, 3)} for e in top]}


def bench_finetune(config, name: str, device: torch.device, pairs: int, seq_len: int, steps: int, compile_: str | None,
                   weights: Path | None = None, dropout: bool = True) -> dict:
    from transformers import AutoModel

    torch.manual_seed(0)
    if not dropout:
        config = copy.deepcopy(config)
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = (AutoModel.from_pretrained(weights, config=config, local_files_only=True, dtype=torch.float32) if weights
             else AutoModel.from_config(config))
    model = model.to(device).train()
    fwd = torch.compile(model, mode=None if compile_ == "default" else compile_) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(1000, 30000, (pairs, seq_len), generator=gen).to(device) for _ in range(2)]
    mask = torch.ones(pairs, seq_len, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = contrastive_loss(fwd, ids[0], mask, ids[1], mask, temperature=0.05)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3 if not compile_ else 6):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - t
    tokens_per_s = 2 * pairs * seq_len * steps / seconds
    flops = train_flops_per_token(model.config, seq_len)
    peak = peak_bf16(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
    res = {"model": name, "pairs_per_step": pairs, "seq_len": seq_len, "steps": steps, "compiled": compile_,
           "dropout": dropout,
           "params_non_embedding": int((flops - 12 * config.num_hidden_layers * config.hidden_size * seq_len) / 6),
           "tokens_per_s": tokens_per_s, "train_flops_per_token": flops, "achieved_tflops": tokens_per_s * flops / 1e12,
           "peak_bf16_tflops": peak / 1e12 if peak else None, "mfu": tokens_per_s * flops / peak if peak else None}
    res["profile"] = _profile_breakdown(step, device)
    del model, fwd, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="local encoder dir (default: packaged MiniLM)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-texts", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--finetune-steps", type=int, default=20)
    ap.add_argument("--finetune-pairs", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--variants", default="bert-base:eager,minilm:eager",
                    help="comma list of MODEL:COMPILE[:nodropout]; MODEL bert-base|minilm, COMPILE eager|default|reduce-overhead|max-autotune")
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--merge-embed-from", type=Path, default=None, help="keep the embed section of an earlier result")
    ap.add_argument("--tiny", action="store_true", help="random tiny encoder (smoke test)")
    ap.add_argument("--name", default="encoder_gpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from transformers import AutoConfig, BertConfig

    device = torch.device(args.device)
    model_path = args.model or default_model_path()
    if args.tiny:
        model_path = tiny_model(scratch_dir("tiny-encoder-"))
    texts = make_texts(args.n_texts)
    figures = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
               "model_path": str(model_path)}
    if args.skip_embed and args.merge_embed_from:
        earlier = json.loads(args.merge_embed_from.read_text())
        figures["embed"] = {**earlier["embed"], "measured": f"{earlier['date']} ({earlier['command']})"}
    elif not args.skip_embed:
        figures["embed"] = bench_embedding(model_path, texts, args.batch_size, args.device, args.rounds, args.max_length)
        print("embed", {k: v for k, v in figures["embed"].items() if k != "seconds"})
    runs = []
    cfg_small = AutoConfig.from_pretrained(model_path, local_files_only=True)
    for variant in [v for v in args.variants.split(",") if v] if args.finetune_steps > 0 else []:
        model_name, compile_, *flags = variant.split(":")
        if args.tiny or model_name == "minilm":
            cfg, weights = cfg_small, model_path
        else:  # BERT-base (random weights) for the MFU target
            cfg, weights = BertConfig(), None
        pairs = args.finetune_pairs if device.type == "cuda" else min(args.finetune_pairs, 8)
        runs.append(bench_finetune(cfg, f"{model_name}:{compile_}" + "".join(f":{f}" for f in flags), device, pairs,
                                   args.seq_len if device.type == "cuda" else 32, args.finetune_steps,
                                   None if compile_ == "eager" else compile_, weights, dropout="nodropout" not in flags))
        print("finetune", {k: v for k, v in runs[-1].items() if k != "profile"}, runs[-1]["profile"]["time_share"],
              runs[-1]["profile"]["device_busy_fraction"], flush=True)
    if runs:
        base = [r for r in runs if r["model"].startswith("bert-base")] or runs
        best = max(base, key=lambda r: r["tokens_per_s"])
        figures["finetune"] = {"tokens_per_s": best["tokens_per_s"], "mfu": best["mfu"], "configuration": best["model"],
                               "seq_len": best["seq_len"], "runs": runs,
                               "mfu_formula": "tokens/s * (6*N_non_embedding + 12*L*d*T) / peak dense bf16 FLOP/s"}
    write_result(args.name, figures, args.out)


if __name__ == "__main__":
    main()
