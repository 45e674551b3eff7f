"""Export an encoder as fp16 safetensors (about 45 MB for MiniLM) with its tokenizer and
sentence-transformers files, e.g. to carry it to a GPU machine that lacks the weights package:

    python benchmarks/export_encoder.py --out .encoder-export/minilm
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

import _common  # noqa: F401  (puts src/ on the path)
from causalrec.text.encoder import default_model_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(".encoder-export/minilm"))
    args = ap.parse_args()
    src = args.model or default_model_path()
    if args.out.exists():
        shutil.rmtree(args.out)
    AutoModel.from_pretrained(src, local_files_only=True, dtype=torch.float16).save_pretrained(args.out)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(args.out)
    for extra in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling"):
        p = src / extra
        if p.is_dir():
            shutil.copytree(p, args.out / extra)
        elif p.exists():
            shutil.copy2(p, args.out / extra)
    print(args.out, sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) // 1024, "KiB")


if __name__ == "__main__":
    main()
