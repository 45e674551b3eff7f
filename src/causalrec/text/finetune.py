"""Contrastive fine-tuning of the text encoder on pairs mined from the interactions.

Pairs (anchor, positive): two items liked by the same user, and a user's profile text with an
item that user liked. Loss: symmetric InfoNCE with in-batch negatives (every other positive in
the batch is a negative). bf16 autocast on GPU, gradient accumulation, optional gradient
checkpointing, checkpoint + resume, early stopping on validation Recall@k (retrieving each
validation anchor's positive among all validation positives).

Distributed: launch with `torchrun --nproc_per_node=N` (or `accelerate launch`); each rank embeds a
shard of every batch's pairs, the embeddings are all-gathered (with gradient) so every rank scores
the whole batch's in-batch negatives, and DDP averages gradients: N processes follow the same loss
curve as one (tested with gloo on CPU). Only torch + transformers + numpy/pandas.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from causalrec.text.encoder import default_model_path, pad_batch, pool


@dataclass
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 64          # pairs per optimiser step (before accumulation)
    grad_accum: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float = 0.05
    max_length: int = 64
    val_fraction: float = 0.1
    patience: int = 2
    recall_k: int = 10
    gradient_checkpointing: bool = False
    bf16: bool = True             # autocast on CUDA (ignored on CPU)
    dropout: bool = True          # False: every dropout off (deterministic steps; faster on GPU)
    seed: int = 0
    max_steps: int | None = None  # stop early (benchmarks / smoke runs)
    progress: bool = True


def mine_pairs(interactions: pd.DataFrame, item_text: dict[str, str], user_text: dict[str, str] | None = None,
               max_pairs_per_user: int = 20, seed: int = 0) -> pd.DataFrame:
    """(anchor, positive) text pairs from positive outcomes: co-liked items and profile -> liked item."""
    rng = np.random.default_rng(seed)
    pos = interactions[(interactions["outcome"] > 0) & interactions["item_id"].isin(item_text.keys())]
    anchors, positives = [], []
    for user, items in pos.groupby("user_id")["item_id"]:
        liked = items.unique()
        if user_text and user in user_text and user_text[user]:
            for i in rng.permutation(liked)[: max(1, max_pairs_per_user // 4)]:
                anchors.append(user_text[user]), positives.append(item_text[i])
        if len(liked) < 2:
            continue
        n = min(max_pairs_per_user, len(liked) * (len(liked) - 1) // 2)
        for _ in range(n):
            a, b = rng.choice(liked, size=2, replace=False)
            anchors.append(item_text[a]), positives.append(item_text[b])
    pairs = pd.DataFrame({"anchor": anchors, "positive": positives})
    return pairs[pairs["anchor"] != pairs["positive"]].reset_index(drop=True)


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world, rank, local


def embed_ids(model, input_ids: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return F.normalize(pool(hidden.float(), mask, pooling), dim=-1)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order, keeping the gradient to this rank's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def contrastive_loss(model, a_ids, a_mask, p_ids, p_mask, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: each anchor's positive against every other positive in the (global) batch.

    Anchors and positives go through the model in one forward (DDP expects one per backward)."""
    width = max(a_ids.shape[1], p_ids.shape[1])
    ids = torch.cat([F.pad(a_ids, (0, width - a_ids.shape[1])), F.pad(p_ids, (0, width - p_ids.shape[1]))])
    mask = torch.cat([F.pad(a_mask, (0, width - a_mask.shape[1])), F.pad(p_mask, (0, width - p_mask.shape[1]))])
    a, p = embed_ids(model, ids, mask).split(len(a_ids))
    # Gathered: the loss (and, through DDP's averaging, the gradient) equals one process's on the whole batch.
    a, p = _gather(a), _gather(p)
    logits = a @ p.T / temperature
    labels = torch.arange(len(a), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def retrieval_recall(model, anchors: list[list[int]], positives: list[list[int]], texts: list[str], pad_id: int,
                     device, k: int, batch: int = 256) -> float:
    """Share of anchors whose own positive is among the k nearest of all positives."""
    model.eval()
    a = torch.cat([embed_ids(model, *pad_batch(anchors[i:i + batch], pad_id, device)) for i in range(0, len(anchors), batch)])
    p = torch.cat([embed_ids(model, *pad_batch(positives[i:i + batch], pad_id, device)) for i in range(0, len(positives), batch)])
    top = (a @ p.T).topk(min(k, len(p)), dim=1).indices.cpu().numpy()
    # Identical positive texts count as hits: co-liked items repeat across users.
    hits = [texts[i] in {texts[j] for j in row} for i, row in enumerate(top)]
    model.train()
    return float(np.mean(hits))


def finetune(pairs: pd.DataFrame, out_dir: str | Path, model_path: str | Path | None = None,
             config: FinetuneConfig | None = None, device: str | None = None) -> dict:
    """Fine-tune and save the best checkpoint to out_dir/best (a loadable HF directory).

    out_dir/last holds the latest state (model, optimiser, scheduler, step); rerunning with the
    same out_dir resumes from it. Returns the history and throughput figures.
    """
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    cfg = config or FinetuneConfig()
    if len(pairs) < 4:
        raise ValueError(f"fine-tuning needs at least 4 pairs, got {len(pairs)}")
    world, rank, local = _dist()
    dev = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    src = Path(model_path) if model_path else default_model_path()
    out_dir = Path(out_dir)
    last, best_dir = out_dir / "last", out_dir / "best"
    resume = (last / "trainer_state.pt").exists()
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(last if resume else src, local_files_only=True, dtype=torch.float32).to(dev)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # mean pooling never uses it; DDP fails on parameters without gradient
    if not cfg.dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {world} processes")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    shuffled = pairs.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    n_val = max(2, int(len(shuffled) * cfg.val_fraction))
    val, fit = shuffled.iloc[:n_val].reset_index(drop=True), shuffled.iloc[n_val:].reset_index(drop=True)
    # Tokenise every text once (the fast tokenizer parallelises); batches only pad.
    def ids(texts):
        return tok(list(texts), truncation=True, max_length=cfg.max_length, return_attention_mask=False,
                   return_token_type_ids=False)["input_ids"]
    fit_a, fit_p, val_a, val_p = ids(fit["anchor"]), ids(fit["positive"]), ids(val["anchor"]), ids(val["positive"])
    pad_id = tok.pad_token_id or 0
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if dev.type == "cuda" else None) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=dev.type == "cuda")
    steps_per_epoch = max(1, len(fit) // (cfg.batch_size * cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    state = {"step": 0, "epoch": 0, "best": -1.0, "bad": 0, "history": [], "step_losses": []}
    if resume:
        # the optimiser's and scheduler's state dicts and our counters: tensors and plain types only
        saved = torch.load(last / "trainer_state.pt", weights_only=True)
        opt.load_state_dict(saved["optimizer"]), sched.load_state_dict(saved["scheduler"])
        state = {"step_losses": [], **saved["state"]}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cuda")
    tokens, t0 = 0, time.perf_counter()
    while state["epoch"] < cfg.epochs and state["step"] < total:
        perm = rng.permutation(len(fit))
        bar = tqdm(range(steps_per_epoch), desc=f"finetune epoch {state['epoch'] + 1}", disable=not cfg.progress or rank)
        for step_in_epoch in bar:
            for micro in range(cfg.grad_accum):
                start = (step_in_epoch * cfg.grad_accum + micro) * cfg.batch_size
                rows = perm[start:start + cfg.batch_size][rank::world]  # each rank its slice of the batch
                a_ids, a_mask = pad_batch([fit_a[r] for r in rows], pad_id, dev)
                p_ids, p_mask = pad_batch([fit_p[r] for r in rows], pad_id, dev)
                with autocast:
                    loss = contrastive_loss(ddp, a_ids, a_mask, p_ids, p_mask, cfg.temperature)
                (loss / cfg.grad_accum).backward()
                tokens += int(a_mask.sum()) + int(p_mask.sum())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            state["step"] += 1
            state["step_losses"].append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if state["step"] >= total:
                break
        state["epoch"] += 1
        recall = retrieval_recall(model, val_a, val_p, val["positive"].tolist(), pad_id, dev, cfg.recall_k)
        state["history"].append({"epoch": state["epoch"], "step": state["step"], "loss": loss.item(), f"val_recall@{cfg.recall_k}": recall})
        # Every rank sees the same validation recall, so all agree on best/bad; only rank 0 writes.
        improved = recall > state["best"]
        state["best"], state["bad"] = (recall, 0) if improved else (state["best"], state["bad"] + 1)
        if rank == 0:
            if improved:
                _save(model, tok, src, best_dir)
            _save(model, tok, src, last)
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state},
                       last / "trainer_state.pt")
        if state["bad"] >= cfg.patience:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    result = {"history": state["history"], "step_losses": state["step_losses"], "best_val_recall": state["best"], "steps": state["step"],
              "tokens_per_s": tokens * world / max(elapsed, 1e-9), "seconds": elapsed, "resumed": resume,
              "config": asdict(cfg), "best_dir": str(best_dir), "world_size": world}
    if rank == 0:
        (out_dir / "finetune.json").write_text(json.dumps(result, indent=2))
    return result


def _save(model, tok, src: Path, dest: Path) -> None:
    """Save a loadable encoder directory, keeping the source's pooling/normalisation files."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for extra in ("modules.json", "1_Pooling"):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, tmp / extra)
        elif (src / extra).is_file():
            shutil.copy2(src / extra, tmp / extra)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def train_flops_per_token(config, seq_len: int) -> float:
    """Forward + backward FLOPs per token of a BERT-style encoder: 6·N + 12·L·d·T.

    N = non-embedding parameters (per layer 4d² attention + 2·d·d_ff MLP), L layers, d hidden size,
    T sequence length (the attention score and value products, 2·2·T·d per layer forward, x3 for
    backward). The standard Kaplan/PaLM accounting, without the embedding lookups.
    """
    d, L, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    n_params = L * (4 * d * d + 2 * d * ff)
    return 6 * n_params + 12 * L * d * seq_len


def main(argv: list[str] | None = None) -> None:
    """CLI for launching under torchrun / accelerate (one process per GPU):

        torchrun --nproc_per_node=N -m causalrec.text.finetune --pairs pairs.parquet --out DIR [--model PATH]
        accelerate launch -m causalrec.text.finetune --pairs pairs.parquet --out DIR

    `pairs.parquet` has columns anchor, positive (e.g. from mine_pairs).
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m causalrec.text.finetune")
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--no-dropout", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    args = ap.parse_args(argv)
    pairs = pd.read_parquet(args.pairs)
    missing = {"anchor", "positive"} - set(pairs.columns)
    if missing:
        raise SystemExit(f"{args.pairs}: missing column(s) {sorted(missing)}")
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                         max_steps=args.max_steps, gradient_checkpointing=args.gradient_checkpointing,
                         dropout=not args.no_dropout, seed=args.seed, progress=False)
    result = finetune(pairs, args.out, args.model, cfg, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
