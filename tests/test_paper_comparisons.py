"""The reproduction's comparisons as a reader meets them: identical configurations named and not tested,
one "too small" note per test set instead of one per comparison, verdicts that never contradict their
interval without saying why, and a report that opens with contents and a summary."""

from __future__ import annotations

import re

import pytest

from cxrtl.paper.comparison_section import comparison_section, in_words, unresolvable_datasets
from cxrtl.paper.comparisons import same_configuration
from cxrtl.paper.render import anchor
from cxrtl.paper.report import build_sections, write_report
from report_payload import demo_like_payload


def _run(name, init="imagenet", random_init=False, seed=2022, **cfg):
    config = {"input": "raw", "channels": 3, "loss": "wce-1cf", "scheme": "finetune", "keep_hidden": False}
    config.update(cfg, init=init, random_init=random_init)
    config["init_source"] = "none" if random_init else init
    return {"name": name, "configuration": name, "seed": seed, "dataset": "pneumonia", "config": config}


def test_same_configuration_only_when_the_same_job_ran():
    none = _run("pneumonia-none-finetune", init="none", random_init=True)
    offline = _run("pneumonia-imagenet-finetune", random_init=True)  # ImageNet unavailable
    online = _run("pneumonia-imagenet-finetune")
    assert same_configuration([none], [offline]) == "both started from random weights: the same configuration"
    assert same_configuration([none], [online]) is None
    assert same_configuration([none], [_run("x", init="none", random_init=True, scheme="extractor")]) is None
    assert same_configuration([none], [_run("x", init="none", random_init=True, seed=7)]) is None


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    return demo_like_payload(tmp_path_factory.mktemp("demo"), figures=False)


def test_identical_configurations_are_named_and_not_tested(payload):
    same = [c for c in payload["comparisons"] if c.get("identical")]
    assert [(c["a"], c["b"]) for c in same] == [("pneumonia-none-finetune", "pneumonia-imagenet-finetune")]
    assert same[0]["p_value"] is None and same[0]["ci95"] is None
    section = comparison_section(payload["comparisons"])
    text = "\n".join(section.paragraphs)
    assert "pneumonia-none-finetune vs pneumonia-imagenet-finetune: both started from random weights" in text
    assert "+0.0 pp" not in text.split("both started from random weights")[1].split("\n")[0]
    row = next(r for r in section.tables[0].rows if r[1] == "pneumonia-none-finetune")
    assert row[3:6] == ["same configuration", "—", "—"]


def test_too_small_test_set_is_said_once_above_the_comparisons(payload):
    small = unresolvable_datasets(payload["comparisons"])
    assert set(small) == {"pneumonia"}  # 10 images: fewer than 6 one-sided disagreements in every pair
    section = comparison_section(payload["comparisons"])
    text = "\n".join(section.paragraphs)
    assert text.count("too small to resolve") == 1 and section.paragraphs[0].startswith(
        "**The pneumonia test"
    )
    assert "(n = 10)" not in text and "(n = 34)" in text  # the COVID verdicts keep their n


def test_verdict_and_interval_never_disagree_silently():
    base = {"a": "x", "b": "y", "n": 100, "discordant": [9, 1], "dataset": "covid"}
    agree = in_words({**base, "difference": 0.08, "ci95": [0.02, 0.14], "p_value": 0.02})
    assert agree.endswith("x is better") and "margin" not in agree
    outside = in_words({**base, "difference": 0.06, "ci95": [0.001, 0.12], "p_value": 0.07})
    assert "not distinguishable" in outside and "the interval just excludes 0" in outside
    inside = in_words({**base, "difference": -0.07, "ci95": [-0.148, 0.0003], "p_value": 0.039})
    assert "y is better" in inside and "the interval just reaches 0" in inside


def test_no_comparison_contradicts_its_interval_without_a_note(payload):
    for c in payload["comparisons"]:
        if c.get("identical"):
            continue
        lo, hi = c["ci95"]
        words = in_words(c)
        if (lo > 0 or hi < 0) != ("is better" in words):
            assert "at the margin" in words or "not after allowing for the" in words, words


def test_report_opens_with_contents_and_a_summary(payload, tmp_path):
    sections = build_sections(payload)
    assert [s.title for s in sections][:2] == ["Summary", "Protocol"]
    summary = sections[0].paragraphs[0]
    best_covid = max(
        (c for c in payload["configurations"] if c["dataset"] == "covid"),
        key=lambda c: c["best_val_acc"]["mean"],
    )
    assert (
        f"`{best_covid['name']}`" in summary
        and "on 34 test images" in summary
        and "on 10 test images" in summary
    )
    assert "95% Wilson interval" in summary
    paths = write_report(tmp_path, payload)
    md = paths["markdown"].read_text()
    contents = md.index("**Contents:**")
    assert md.index("# cxrtl reproduction") < contents < md.index("## Summary") < md.index("## Protocol")
    links = re.findall(r"\]\(#([^)]+)\)", md[contents : md.index("\n", contents)])
    assert (
        links == [anchor(s.title) for s in sections]
        and "is-a-difference-real-the-papers-comparisons" in links
    )
    html = paths["html"].read_text()
    for link in links:
        assert f"href='#{link}'" in html and f"<h2 id='{link}'>" in html
