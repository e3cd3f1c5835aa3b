"""How `segment` time and peak memory grow with the number of classes and the image size; eval throughput.

    python benchmarks/scaling.py classes --model sd15 [--counts 1,10,30,60,150] [--repeats 3]
    python benchmarks/scaling.py classes --model world-m32
    python benchmarks/scaling.py size --model world-m32 [--sizes 64,256,512,1024]
    python benchmarks/scaling.py throughput [--model world-m32] [--n 64] [--batches 1,16]

Class names are ADE20K's (repeated with a suffix past 150). `--model sd15` builds a random-weight SD1.5-size
model whose tokenizer knows every ADE20K word as one token (CLIP's BPE does so for most of them; the
letter-level tokenizer of `overhead.py` would spend ~6 tokens per name and so ~3× the prompts). Each
configuration runs in its own process, interleaved over `--repeats` rounds; the peak is the process's RSS peak
over its start (clear_refs / VmHWM) on the first run, the time the best of the runs after it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from compare_capture import Peak  # noqa: E402


def ade_names(n: int) -> list[str]:
    """n distinct class names: ADE20K's first synonyms, then again with a suffix."""
    from attnseg.eval import datasets

    path = Path(datasets.__file__).parent / "classnames" / "ade20k150.txt"
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    base = [line.split("|")[0].strip() for line in lines]
    base = [b for b in dict.fromkeys(base) if b]
    return [base[i % len(base)] + ("" if i < len(base) else f" {i // len(base)}") for i in range(n)]


def class_names(tokenizer, n: int) -> list[str]:
    """ADE20K names where the tokenizer knows their words; else its own words, then pairs of them (world)."""
    from attnseg.prompts import STOP_WORDS

    vocab = tokenizer.get_vocab()
    names = ade_names(n)
    if all(w in vocab for name in names for w in name.split()):
        return names
    words = sorted(w for w in vocab if w.isalpha() and w.lower() not in STOP_WORDS and w not in ("photo",))
    pairs = [f"{a} {b}" for a in words for b in words if a != b]
    return (words + pairs)[:n]


def word_tokenizer(folder: Path):
    """A CLIP-like word-level fast tokenizer (start/end tokens, 77 long) knowing every ADE20K word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for name in ade_names(300) for w in name.replace("-", " ").split()})
    words += ["a", "photo", "of", "and", ",", ".", "-"] + [str(i) for i in range(10)]
    vocab = {"<|unk|>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 2)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=77,
    )
    tok.save_pretrained(folder)
    return tok


def build_sd15(folder: Path) -> None:
    """The SD1.5-size random model of overhead.py, with the word-level tokenizer."""
    from overhead import build

    build(folder, "sd15", tokenizer=word_tokenizer(folder / "_words"))


def _image(px: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((px, px, 3)) * 255).astype(np.uint8))


def child_segment(model: str, classes: int, px: int, runs: int) -> dict:
    import torch

    from attnseg.segmentor import Segmentor

    torch.set_grad_enabled(False)
    seg = Segmentor.from_pretrained(model, device="cpu", dtype="float32")
    image, names = _image(px or seg.backbone.preset.native_size), class_names(seg.builder.tokenizer, classes)
    peak = Peak("cpu")
    base = peak.start()
    start = time.perf_counter()
    first = seg.segment(image, names)
    record_time = time.perf_counter() - start
    record = {"peak_bytes": peak.peak() - base, "prompts": len(first.meta["prompts"])}
    if runs:
        peak.for_timing()
        seg.segment(image, names)
    times, parts = [], []
    for _ in range(runs):
        start = time.perf_counter()
        res = seg.segment(image, names)
        times.append(time.perf_counter() - start)
        parts.append(res.meta["timings"])
    if not runs:  # --runs 0: the measured (cold) run is the timed one
        times, parts = [record_time], [first.meta["timings"]]
    best = min(range(len(times)), key=times.__getitem__)
    return record | {"seconds": times[best], **{k: parts[best][k] for k in ("forward_s", "method_s")}}


def child_throughput(model: str, root: str, configs: list[tuple[str, int]], repeats: int, out: str) -> dict:
    """Eval throughput of every (protocol, batch) in one process, interleaved round by round.

    One process and one loaded model for all: the configurations see the same machine load, and imports,
    model load and a first call (paid once per eval, not per image) stay outside the clock.
    """
    from attnseg.eval.runner import EvalConfig, make_segmentor, run_eval

    seg, result = None, {}
    for r in range(repeats):
        for protocol, batch in configs:
            cfg = EvalConfig(
                dataset="world",
                root=root,
                out=f"{out}/{protocol}-{batch}-{r}",  # a fresh folder: nothing is resumed
                model=model,
                device="cpu",
                dtype="float32",
                protocol=protocol,
                tau=0.5,
                batch_size=batch,
                progress=False,
            )
            if seg is None:
                seg = make_segmentor(cfg)
                seg.segment(_image(64), ["sky"])
            seg.batch_size = batch
            start = time.perf_counter()
            metrics = run_eval(cfg, lambda s=seg: s)
            seconds = time.perf_counter() - start
            n = metrics["counts"]["images"]
            row = {"images_per_s": n / seconds, "mIoU": metrics["mIoU"], "load": os.getloadavg()[0]}
            result.setdefault(f"{protocol} batch {batch}", []).append(row)
            print(f"round {r + 1} {protocol} batch {batch}: {row}", file=sys.stderr)
    return result


def _spawn(argv: list[str], threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rounds(configs: list[tuple[str, list[str]]], repeats: int, threads: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for r in range(repeats):
        for name, argv in configs:
            out[name].append(_spawn(argv, threads))
            print(f"round {r + 1} {name}: {out[name][-1]}", file=sys.stderr)
    return out


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.1f},{b:.1f},{c:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["classes", "size", "throughput", "_segment", "_eval"])
    parser.add_argument("--model", default="world-m32", help="sd15 (built), an embedded name or a folder")
    parser.add_argument("--counts", default="1,10,30,60,150")
    parser.add_argument("--sizes", default="64,256,512,1024")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--px", type=int, default=0, help="image side (0: the model's native size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1, help="timed runs per process after the measured one")
    parser.add_argument("--n", type=int, default=64, help="throughput: world scenes")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--protocols", default="oracle-tags,open")
    parser.add_argument("--_args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per child (1: stable on a shared, loaded machine)"
    )
    args = parser.parse_args()
    if args.what == "_segment":
        print(json.dumps(child_segment(args.model, args.classes, args.px, args.runs)))
        return
    if args.what == "_eval":
        root, configs, out = args._args
        print(json.dumps(child_throughput(args.model, root, json.loads(configs), args.repeats, out)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "sd15":
            model = str(Path(tmp) / "sd15")
            print("building a random-weight SD1.5-size model (word-level tokenizer) ...", file=sys.stderr)
            build_sd15(Path(model))
        if args.what == "throughput":
            from attnseg.world.render import render_split

            root = render_split(Path(tmp) / "world", "test", args.n, seed=0, progress=False)
            configs = [[p, int(b)] for p in args.protocols.split(",") for b in args.batches.split(",")]
            start = _load()
            argv = ["_eval", "--model", model, "--repeats", str(args.repeats)]
            res = _spawn(argv + ["--_args", str(root), json.dumps(configs), f"{tmp}/runs"], args.threads)
            print(
                f"world eval throughput, {args.model}, {args.n} scenes, medians of {args.repeats} "
                f"interleaved rounds in one process; {start} → {_load()}"
            )
            print(f"{'protocol, batch':24s} {'images/s':>9s} {'× batch 1':>10s} {'mIoU':>7s}")
            for name in res:
                ips = statistics.median(x["images_per_s"] for x in res[name])
                one = statistics.median(x["images_per_s"] for x in res[name.rsplit(" ", 1)[0] + " 1"])
                print(f"{name:24s} {ips:9.2f} {ips / one:10.2f} {100 * res[name][0]['mIoU']:7.2f}")
            return
        if args.what == "classes":
            points = [int(c) for c in args.counts.split(",")]
            configs = [
                (
                    str(c),
                    [
                        "_segment",
                        "--model",
                        model,
                        "--classes",
                        str(c),
                        "--px",
                        str(args.px),
                        "--runs",
                        str(args.runs),
                    ],
                )
                for c in points
            ]
            label = "classes"
        else:
            points = [int(s) for s in args.sizes.split(",")]
            configs = [
                (
                    str(s),
                    [
                        "_segment",
                        "--model",
                        model,
                        "--classes",
                        str(args.classes),
                        "--px",
                        str(s),
                        "--runs",
                        str(args.runs),
                    ],
                )
                for s in points
            ]
            label = "image px"
        start = _load()
        res = _rounds(configs, args.repeats, args.threads)
    print(f"segment vs {label}, {args.model}, medians of {args.repeats}; {start} → {_load()}")
    first = str(points[0]) if label == "image px" else ("10" if "10" in res else str(points[0]))
    ref = statistics.median(x["seconds"] for x in res[first])
    print(
        f"{label:>9s} {'prompts':>7s} {'seconds':>8s} {'× ' + first:>8s} {'forward s':>9s} {'method s':>9s} {'peak MiB':>9s}"
    )
    for p in points:
        rs = res[str(p)]
        sec = statistics.median(x["seconds"] for x in rs)
        print(
            f"{p:9d} {rs[0]['prompts']:7d} {sec:8.2f} {sec / ref:8.2f} {statistics.median(x['forward_s'] for x in rs):9.2f} "
            f"{statistics.median(x['method_s'] for x in rs):9.2f} {statistics.median(x['peak_bytes'] for x in rs) / 2**20:9.1f}"
        )


if __name__ == "__main__":
    main()
