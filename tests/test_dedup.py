"""Duplicate detection: exact and near duplicates, multi-index matching, the hash cache, `cxrtl data dedup`."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from cxrtl.errors import CxrtlError
from cxrtl.integrity import dedup, duplicates, hashing


def cxr_like(seed: int, size: int = 96) -> np.ndarray:
    """A small grey image with chest-like structure; different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 40 + 160 * np.exp(-(((xx - 0.5) / 0.45) ** 2))
    for cx in (0.32 + 0.05 * rng.standard_normal(), 0.68 + 0.05 * rng.standard_normal()):
        cy, rx, ry = (
            0.5 + 0.05 * rng.standard_normal(),
            0.12 + 0.04 * rng.random(),
            0.25 + 0.06 * rng.random(),
        )
        img -= (80 + 40 * rng.random()) * np.exp(-((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) ** 2))
    img += 12 * np.sin(yy * (12 + 8 * rng.random()) * np.pi + 6 * rng.random())
    for _ in range(6):
        cx, cy, r = rng.random(), rng.random(), 0.04 + 0.12 * rng.random()
        img += 50 * rng.random() * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(arr: np.ndarray, path, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return str(path)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------- matching
def brute_force(h, radius, labels=None):
    out = []
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            d = (int(h[i]) ^ int(h[j])).bit_count()
            if d <= radius and (labels is None or labels[i] != labels[j]):
                out.append((i, j, d))
    return out


@pytest.mark.parametrize("radius", [0, 1, 3, 6, 10])
def test_search_pairs_equals_brute_force(radius):
    rng = np.random.default_rng(radius)
    base = [int(x) for x in rng.integers(0, 2**63, size=60, dtype=np.int64)]
    h = list(base)
    for k in range(60):  # clustered copies with a few bits flipped
        v = base[k % 15]
        for b in rng.choice(64, size=int(rng.integers(0, 9)), replace=False):
            v ^= 1 << int(b)
        h.append(v)
    h.append(2**64 - 1)
    h.append(2**64 - 2)  # top bit set: must survive uint64 handling
    assert duplicates.search_pairs(h, radius) == brute_force(h, radius)
    labels = [i % 3 for i in range(len(h))]
    assert duplicates.search_pairs(h, radius, labels) == brute_force(h, radius, labels)


def test_search_pairs_big_bucket_is_blocked_not_all_pairs_in_memory():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**40, size=1100, dtype=np.int64).astype(np.uint64) << np.uint64(24)  # low bits equal
    h[5] = h[7] ^ np.uint64(1 << 30)
    h[9] = h[7] ^ np.uint64(3 << 40)
    pairs = duplicates.search_pairs(
        h, 2
    )  # band 0 (the low 22 bits) is one bucket of 1100 > 1024: blocked path
    x = h[:, None] ^ h[None, :]
    d = np.bitwise_count(x)
    i, j = np.nonzero(np.triu(d <= 2, 1))
    assert pairs == [(int(a), int(b), int(d[a, b])) for a, b in zip(i, j)]
    assert (5, 7, 1) in pairs and (7, 9, 2) in pairs


def test_threshold_is_validated():
    with pytest.raises(CxrtlError, match="threshold"):
        duplicates.check_threshold(-1)
    with pytest.raises(CxrtlError, match="threshold"):
        duplicates.check_threshold(duplicates.MAX_THRESHOLD + 1)


# ---------------------------------------------------------------------------------------------- hashing
def test_near_duplicates_survive_reencoding_resizing_and_format(tmp_path):
    base = cxr_like(1, 128)
    paths = {
        "orig": save(base, tmp_path / "orig.png"),
        "jpeg": save(base, tmp_path / "orig.jpg", quality=90),
        "half": save(
            np.asarray(Image.fromarray(base).resize((64, 64), Image.BILINEAR)), tmp_path / "half.png"
        ),
        "big": save(
            np.asarray(Image.fromarray(base).resize((512, 512), Image.BICUBIC)),
            tmp_path / "big.jpeg",
            quality=92,
        ),
        "rgb": str(tmp_path / "rgb.png"),
    }
    Image.fromarray(base).convert("RGB").save(paths["rgb"])
    others = [save(cxr_like(s, 128), tmp_path / f"other{s}.png") for s in range(2, 8)]
    hashes, bad = hashing.hash_images([*paths.values(), *others], progress=False)
    assert not bad
    dup = duplicates.find_duplicates(hashes, progress=False)
    names = {h.path: k for k, h in zip([*paths, *[f"other{i}" for i in range(6)]], hashes)}
    linked = {
        frozenset((names[hashes[i].path], names[hashes[j].path])) for i, j, *_ in [*dup.exact, *dup.near]
    }
    for k in ("jpeg", "half", "big", "rgb"):
        assert frozenset(("orig", k)) in linked, k
    assert not any(n.startswith("other") for pair in linked for n in pair), "distinct images matched"
    exact = {frozenset((names[hashes[i].path], names[hashes[j].path])) for i, j in dup.exact}
    assert exact == {frozenset(("orig", "rgb"))}  # same decoded grey pixels, different files


def test_exact_needs_same_pixels_not_same_bytes(tmp_path):
    arr = cxr_like(3, 300)
    a = save(arr, tmp_path / "a.png", compress_level=1)
    b = save(arr, tmp_path / "b.png", compress_level=9)  # different bytes, same pixels
    j = save(arr, tmp_path / "c.jpeg", quality=95)
    decoded = np.asarray(Image.open(j).convert("L"))
    d = save(decoded, tmp_path / "d.png")  # same pixels as the JPEG decodes to
    big = np.asarray(Image.fromarray(arr).resize((900, 900)))
    e = save(big, tmp_path / "e.jpeg", quality=95)  # big JPEG: hashed from a reduced decode
    f = save(np.asarray(Image.open(e).convert("L")), tmp_path / "f.png")
    hashes, _ = hashing.hash_images([a, b, j, d, e, f], progress=False)
    assert hashes[4].pixel_digest is None  # reduced decode: exactness decided lazily
    dup = duplicates.find_duplicates(hashes, threshold=0, progress=False)
    exact = {(os.path.basename(hashes[i].path), os.path.basename(hashes[k].path)) for i, k in dup.exact}
    assert exact == {("a.png", "b.png"), ("c.jpeg", "d.png"), ("e.jpeg", "f.png")}


def test_bad_files_are_reported_not_raised(tmp_path):
    good = save(cxr_like(1, 64), tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    hashes, bad = hashing.hash_images(
        [good, *(str(tmp_path / n) for n in ("empty.png", "text.jpg", "cut.png"))], progress=False
    )
    assert [h.path for h in hashes] == [good]
    reasons = {os.path.basename(u.path): u.reason for u in bad}
    assert set(reasons) == {"empty.png", "text.jpg", "cut.png"}
    assert all(r and "\n" not in r for r in reasons.values())


def test_hash_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    p = save(cxr_like(1, 64), tmp_path / "x.png")
    first, _ = hashing.hash_images([p], progress=False)
    shards = list((tmp_path / "cache" / "dedup").glob("*.json"))
    assert len(shards) == 1 and not list((tmp_path / "cache" / "dedup").glob(".*"))  # no temp left behind
    calls = []
    real = hashing._hash_one
    monkeypatch.setattr(hashing, "_hash_one", lambda path: calls.append(path) or real(path))
    again, _ = hashing.hash_images([p], progress=False)
    assert again == first and calls == []
    save(cxr_like(2, 64), tmp_path / "x.png")  # new content -> new size/mtime -> rehashed
    os.utime(p, ns=(1, 1))
    changed, _ = hashing.hash_images([p], progress=False)
    assert calls == [p] and changed[0].phash != first[0].phash
    shards[0].write_text("{ not json")  # a damaged cache is ignored and rewritten, never trusted
    calls.clear()
    hashing.hash_images([p], progress=False)
    assert calls == [p]
    json.loads(shards[0].read_text())


def test_overlap_with(tmp_path):
    a = [save(cxr_like(s), tmp_path / "a" / f"{s}.png") for s in range(4)]
    b_same = save(cxr_like(1), tmp_path / "b" / "same.jpeg", quality=90)
    b_near = save(np.asarray(Image.fromarray(cxr_like(2)).resize((192, 192))), tmp_path / "b" / "near.png")
    b_new = [save(cxr_like(s), tmp_path / "b" / f"new{s}.png") for s in range(10, 14)]
    b_dup_in_b = save(cxr_like(10), tmp_path / "b" / "new10-copy.png")  # within b only: not an overlap
    got = duplicates.overlap_with(a, [b_same, b_near, *b_new, b_dup_in_b], progress=False)
    assert got == {b_same, b_near}


# --------------------------------------------------------------------------------------------------- CLI
def make_dataset(root, per_class=5, seeds=None, copies=()):
    """class-folder dataset; ``copies``: (src_class, src_i, dst_name) re-encoded copies."""
    seeds = seeds or {"NORMAL": 100, "PNEUMONIA": 200}
    for label, s0 in seeds.items():
        for i in range(per_class):
            save(cxr_like(s0 + i, 64), root / label / f"{label.lower()}-{i}.png")
    for label, i, dst in copies:
        src = cxr_like(seeds[label] + i, 64)
        save(src, root / label / dst, **({"quality": 95} if dst.endswith(".jpeg") else {"compress_level": 1}))
    return root


def dedup_wired() -> bool:
    """Whether `cxrtl data dedup` is registered by the data command (cxrtl.commands.data)."""
    from cxrtl import cli

    for action in cli.build_parser()._subparsers._group_actions:
        data = action.choices.get("data")
        if data is not None and data._subparsers is not None:
            return any("dedup" in a.choices for a in data._subparsers._group_actions)
    return False


def run_dedup(argv):
    """``cxrtl data dedup`` in-process: through the real CLI once data.py wires it in, else directly."""
    from cxrtl import cli

    if dedup_wired():
        return cli.main(["data", "dedup", *argv])
    parser = argparse.ArgumentParser(prog="cxrtl data")
    dedup.add_parser(parser.add_subparsers())
    args = parser.parse_args(["dedup", *argv])
    try:
        return args.func(args)
    except CxrtlError as exc:
        print(f"cxrtl: error: {exc}", file=sys.stderr)
        return 2


def test_cli_json_within_one_dataset(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", copies=[("NORMAL", 0, "copy.jpeg"), ("PNEUMONIA", 1, "same.png")])
    (tmp_path / "ds" / "NORMAL" / "junk.png").write_text("nope")
    assert run_dedup([str(root), "--format", "json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] == [["PNEUMONIA/pneumonia-1.png", "PNEUMONIA/same.png"]]
    assert [p[:2] for p in report["near"]] == [["NORMAL/copy.jpeg", "NORMAL/normal-0.png"]]
    assert all(isinstance(d, int) and 0 <= d <= report["threshold"] for *_, d in report["near"])
    assert report["unreadable"] == [] or all(len(u) == 2 for u in report["unreadable"])


def test_cli_split_leakage_and_drop(tmp_path, capsys):
    from cxrtl.data.records import Record
    from cxrtl.data.sources import load_dataset
    from cxrtl.data.splits import read_split_csv, write_split_csv

    root = make_dataset(
        tmp_path / "ds",
        per_class=6,
        copies=[("NORMAL", 0, "leak.jpeg"), ("NORMAL", 1, "twin.png"), ("PNEUMONIA", 2, "valcopy.png")],
    )
    index = load_dataset(root)
    by = {r.path: r for r in index.records}
    assign = {
        "NORMAL/leak.jpeg": "test",
        "NORMAL/normal-0.png": "train",
        "NORMAL/twin.png": "train",
        "NORMAL/normal-1.png": "train",
        "PNEUMONIA/pneumonia-2.png": "val",
        "PNEUMONIA/valcopy.png": "test",
    }
    split = {"train": [], "val": [], "test": []}
    for i, (p, r) in enumerate(sorted(by.items())):
        split[assign.get(p, ("train", "val", "test")[i % 3])].append(r)
    csv_path = tmp_path / "split.csv"
    write_split_csv(csv_path, split)
    out = tmp_path / "clean.csv"
    code = run_dedup(
        [str(root), "--split", str(csv_path), "--format", "json", "--drop", str(out), "--no-progress"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    cross = {(a, b, sa, sb) for a, b, sa, sb in report["cross_split"]}
    assert ("NORMAL/normal-0.png", "NORMAL/leak.jpeg", "train", "test") in cross
    assert ("PNEUMONIA/pneumonia-2.png", "PNEUMONIA/valcopy.png", "val", "test") in cross
    cleaned = read_split_csv(out, index)
    kept = {r.path: s for s, recs in cleaned.items() for r in recs}
    assert "NORMAL/leak.jpeg" not in kept and "PNEUMONIA/valcopy.png" not in kept
    assert kept["NORMAL/normal-0.png"] == "train" and kept["PNEUMONIA/pneumonia-2.png"] == "val"
    assert ("NORMAL/twin.png" in kept) != ("NORMAL/normal-1.png" in kept)  # train keeps one of the group
    assert len(kept) == len(index.records) - 3
    assert all(isinstance(r, Record) for recs in cleaned.values() for r in recs)
    # the cleaned split has no cross-split duplicates left
    assert run_dedup([str(root), "--split", str(out), "--format", "json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["cross_split"] == []


def test_cli_two_datasets(tmp_path, capsys):
    a = make_dataset(tmp_path / "covid", seeds={"COVID": 300, "Normal": 400})
    b = make_dataset(tmp_path / "kermany", seeds={"NORMAL": 500, "PNEUMONIA": 600})
    save(cxr_like(402, 64), b / "NORMAL" / "from-covid.jpeg", quality=95)
    assert run_dedup([str(a), str(b), "--format", "json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    pairs = [p[:2] for p in report["exact"] + report["near"]]
    assert pairs == [["Normal/normal-2.png", "NORMAL/from-covid.jpeg"]]
    assert report["scope"] == "datasets"


def test_cli_text_and_errors(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", per_class=3)
    assert run_dedup([str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 images hashed" in out and "0 exact pairs" in out
    assert run_dedup([str(root), "--drop", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cxrtl: error:") and "--split" in err[0]
    assert run_dedup([str(root), "--threshold", "99"]) == 2
    assert capsys.readouterr().err.startswith("cxrtl: error:")
    assert not (tmp_path / "x.csv").exists()


def test_report_file_is_written_atomically(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", per_class=3)
    out = tmp_path / "reports" / "dedup.json"
    assert run_dedup([str(root), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["summary"]["images"] == 6
    assert [p.name for p in out.parent.iterdir()] == ["dedup.json"]
    assert out.read_text().endswith("\n")


def test_synthetic_sets_planted_overlap_found_and_no_false_positives(synth_roots, capsys):
    """The synthetic COVID set re-uses a few Kermany images (as the real one does): exactly those are found."""
    covid, kermany = synth_roots
    for root in (covid, kermany):  # look-alike radiographs of different patients are not duplicates
        assert run_dedup([str(root), "--format", "json", "--no-progress"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["exact"] == [] and report["near"] == [], report["near"][:5]
    assert run_dedup([str(covid), str(kermany), "--format", "json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    pairs = [p[:2] for p in report["exact"] + report["near"]]
    assert pairs
    for a, b in pairs:
        assert (a.startswith("Normal/") and "/NORMAL/" in b) or (
            a.startswith("Viral Pneumonia/") and "_virus_" in b
        ), (a, b)
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})


def test_hash_cache_expands_tilde_in_cxrtl_cache_dir(tmp_path, monkeypatch):
    """CXRTL_CACHE_DIR='~/x' means <HOME>/x for the hash cache, as for the image cache (not a './~' folder)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CXRTL_CACHE_DIR", "~/x")
    monkeypatch.chdir(work)
    p = save(cxr_like(1, 64), tmp_path / "img" / "x.png")
    hashing.hash_images([p], progress=False)
    assert len(list((home / "x" / "dedup").glob("*.json"))) == 1
    assert not (work / "~").exists()
