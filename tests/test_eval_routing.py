"""Routing: a router learned from an evaluation table, measured held out by prompt against the best single variant,
the oracle and a random choice; saved as JSON; used on a pipeline (al.route) and by the runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attnlens as al
from attnlens.eval import Router, Suite, evaluate_router, fit_router, merge_grid, parse_variants, run, winners
from attnlens.eval.router_features import ATTENTION_COLUMNS, PromptInfo, attention_rows

SEED = Path(__file__).parent / "data" / "seed5way"
STYLES = {"rock": "a", "jazz": "b", "folk": "c", "metal": "a"}  # the best variant is a function of the style word


def planted(n_per: int = 6, seeds: int = 2, rng_seed: int = 0) -> tuple[pd.DataFrame, dict[str, str]]:
    """Prompts '<style> song, <voice> voice'; the style's variant has WER ≈ 0.1, the others 0.5-0.9."""
    rng = np.random.default_rng(rng_seed)
    rows, texts = [], {}
    for style, best in STYLES.items():
        for k in range(n_per):
            pid = f"{style}{k}"
            texts[pid] = f"{style} song, {rng.choice(['warm', 'bright', 'dark'])} voice"
            for v in "abc":
                base = 0.1 if v == best else rng.uniform(0.5, 0.9)
                for s in range(seeds):
                    rows.append({"prompt_id": pid, "variant": v, "seed": s, "wer": base + rng.uniform(0, 0.02)})
    return pd.DataFrame(rows), texts


@pytest.mark.parametrize("folds", ["loo", 4])
def test_planted_rule_is_recovered_held_out(folds):
    df, texts = planted()
    rep = evaluate_router(df, ["text"], prompts=texts, folds=folds, n_resamples=1000)
    assert rep.accuracy == 1.0
    assert rep.summary.loc["routed", "wer_mean"] == rep.summary.loc["oracle", "wer_mean"]
    assert rep.summary.loc["oracle", "wer_mean"] == pytest.approx(winners(df).oracle)
    assert rep.verdict == "better than the best single variant" and rep.comparison["ci_hi"] < 0
    assert rep.per_prompt["routed"].tolist() == [STYLES[p.rstrip("0123456789")] for p in rep.per_prompt.index]
    # random = expected WER of a uniform choice; best single = the lowest mean over all prompts
    assert rep.summary.loc["random", "wer_mean"] == pytest.approx(df.wer.mean())
    assert rep.summary.loc["best single", "wer_mean"] == pytest.approx(df.groupby("variant").wer.mean().min())
    assert "| routed |" in rep.to_markdown()


@pytest.mark.parametrize("rng_seed", range(5))
def test_equal_variants_are_not_reported_better(rng_seed):
    rng = np.random.default_rng(100 + rng_seed)
    vocab = ["warm", "dark", "bright", "slow", "fast", "piano", "guitar", "synth"]
    texts = {f"p{i}": " ".join(rng.choice(vocab, size=3)) for i in range(30)}
    df = pd.DataFrame(
        [
            {"prompt_id": p, "variant": v, "seed": 0, "wer": float(np.clip(0.5 + rng.normal(0, 0.15), 0, None))}
            for p in texts
            for v in "abcde"
        ]
    )
    rep = evaluate_router(df, ["text"], prompts=texts, n_resamples=2000)
    assert rep.verdict != "better than the best single variant"
    assert rep.comparison["ci_hi"] >= 0


def test_seed_table_routing_figures():
    """The figures docs/evaluation.md gives for the seed's table: WER as published (normalize="lower") and rescored
    with Whisper's normalizer; leave one genre out, words + lyric facts."""
    df = pd.read_csv(SEED / "results.csv", keep_default_na=False)
    rescored = df.assign(wer=[al.eval.wer(r, h) for r, h in zip(df.ground_truth, df.transcription)])
    expected = {  # system: (mean, lo, hi) as published, then rescored
        "routed": ((0.554, 0.385, 0.740), (0.589, 0.418, 0.782)),
        "best single": ((0.465, 0.302, 0.655), (0.446, 0.274, 0.647)),
        "single (train)": ((0.652, 0.488, 0.829), (0.641, 0.467, 0.830)),
        "oracle": ((0.182, 0.111, 0.263), (0.160, 0.094, 0.236)),
        "random": ((0.616, 0.545, 0.690), (0.610, 0.534, 0.687)),
    }
    verdicts = ("not distinguishable", "worse")
    for k, table in enumerate((df, rescored)):
        rep = evaluate_router(table, ["text", "facts"])
        got = rep.summary[["wer_mean", "wer_lo", "wer_hi"]].round(3)
        assert {s: tuple(got.loc[s]) for s in expected} == {s: v[k] for s, v in expected.items()}
        assert rep.best_single == "lora" and rep.verdict.startswith(verdicts[k])
        assert round(rep.accuracy, 3) == (0.267, 0.2)[k]
    words = evaluate_router(df, ["text"], n_resamples=100)
    assert round(words.summary.loc["routed", "wer_mean"], 3) == 0.571 and words.verdict.startswith("not")
    assert fit_router(df, ["text", "facts"]).vocabulary == ["w:pop", "w:rock"]


def test_router_json_round_trip_and_refusals(tmp_path):
    df, texts = planted()
    router = fit_router(df, ["text", "facts"], prompts=texts)
    path = router.save(tmp_path / "router.json")
    d = json.loads(Path(path).read_text())
    assert d["format"] == "attnlens.router" and d["variants"] == ["a", "b", "c"]
    back = Router.load(path)
    infos = [PromptInfo("x", "jazz song", "[verse]\nla la"), PromptInfo("y", "metal song, dark voice")]
    pd.testing.assert_frame_equal(back.predict(infos), router.predict(infos))
    assert [back.choose(i) for i in infos] == ["b", "a"]
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an attnlens router"):
        Router.load(tmp_path / "other.json")
    (tmp_path / "bad.json").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="not a JSON router"):
        Router.load(tmp_path / "bad.json")


def test_router_falls_back_to_best_single_without_signal():
    df = pd.DataFrame(
        [{"prompt_id": f"p{i}", "variant": v, "wer": w} for i in range(6) for v, w in (("a", 0.3), ("b", 0.6))]
    )
    router = fit_router(df, ["text"], prompts={f"p{i}": "same words" for i in range(6)})
    assert router.vocabulary == [] and np.isinf(router.lam)
    assert router.choose(PromptInfo("new", "anything at all")) == "a"


def test_runner_routed_variant(tmp_path):
    from test_eval_runner import FakeASR, FakePipe

    suite = Suite.from_records(
        [
            {"id": f"p{i}", "caption": style, "lyrics": f"[verse]\n{w}", "duration": 0.5}
            for i, (style, w) in enumerate([("rock", "alpha beta"), ("jazz", "red green"), ("rock", "sun moon")])
        ]
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    df = pd.DataFrame(
        [
            {"prompt_id": f"{s}{k}", "variant": v, "wer": 0.1 if (v == "lora") == (s == "rock") else 0.7}
            for s in ("rock", "jazz")
            for k in range(4)
            for v in ("baseline", "lora")
        ]
    )
    router = fit_router(df, ["text"], prompts={f"{s}{k}": s for s in ("rock", "jazz") for k in range(4)})
    router.save(tmp_path / "router.json")
    pipe = FakePipe(suite)
    variants = {"baseline": None, "lora": str(adapter), "routed": str(tmp_path / "router.json")}
    res = run(pipe, suite, variants, seeds=[0], transcriber=FakeASR(suite), out_dir=tmp_path / "ev", progress=False)
    routed = res[res.variant == "routed"].set_index("prompt_id")
    assert routed.routed_to.tolist() == ["lora", "baseline", "lora"]
    assert routed.adapter.tolist() == [str(adapter), "", str(adapter)]
    assert routed.wer.tolist() == [0.0, 0.5, 0.0]  # the fake ASR hears every word only with the adapter on
    assert set(res[res.variant != "routed"].routed_to) == {""}
    again = run(pipe, suite, variants, seeds=[1], transcriber=FakeASR(suite), out_dir=tmp_path / "e2", progress=False)
    assert again[again.variant == "routed"].routed_to.tolist() == ["lora", "baseline", "lora"]  # same pipe, twice
    with pytest.raises(ValueError, match="batch_size=1"):
        run(pipe, suite, variants, seeds=[0], transcriber=FakeASR(suite), out_dir=tmp_path / "b2", batch_size=2)
    with pytest.raises(KeyError, match="no adapter was given"):
        run(pipe, suite, {"routed": router}, seeds=[0], transcriber=FakeASR(suite), out_dir=tmp_path / "x")
    assert [v.router is not None for v in parse_variants(variants)] == [False, False, True]


def test_cli_takes_a_router_variant_and_checks_it_before_loading(tmp_path):
    from test_eval_cli import parse

    from attnlens.eval.cli import main

    df, texts = planted(n_per=2, seeds=1)
    path = fit_router(df, ["text"], prompts=texts).save(tmp_path / "router.json")
    base = ["--out", str(tmp_path), "--asr-model", "x", "--pipeline", "tiny"]
    with pytest.raises(KeyError, match="may choose 'a' but no adapter was given"):
        main(parse(["--variant", "c", "--variant", f"routed={path}", *base]))
    with pytest.raises(ValueError, match="need batch_size=1"):
        main(parse(["--variant", "a", "--variant", "b", "--variant", "c", "--variant", f"routed={path}", "--batch-size",
                    "2", *base]))  # fmt: skip


# ------------------------------------------------------------------------------------- on the tiny pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny pipeline and two saved LoRA adapters (random, non-zero B)."""
    from attnlens.train.lora import LoraConfig, add_lora, lora_parameters, save_adapter

    pipe = al.models.tiny_pipeline(seed=0)
    root = tmp_path_factory.mktemp("adapters")
    paths = {}
    for i, name in enumerate(("a", "b")):
        add_lora(pipe, LoraConfig(rank=2, alpha=4, targets=("cross_attn",), projections=("q", "v")), name=name)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in lora_parameters(pipe, name).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        paths[name] = save_adapter(pipe, str(root / name), name)
    pipe.transformer.delete_adapters(["a", "b"])
    return pipe, paths


CALL = {"lyrics": "[verse]\nhello world", "audio_duration": 0.5, "num_inference_steps": 2, "guidance_scale": 1.0}


def generate(pipe, prompt):
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="latent", **CALL).audios


def test_route_loads_exactly_the_chosen_adapter(tiny):
    pipe, paths = tiny
    df, texts = planted(n_per=3, seeds=1)
    df = df.replace({"variant": {"c": "base"}})
    router = fit_router(df, ["text"], prompts=texts)
    # the same router, also reading attention (zero weights): its one-step pass must leave the generator untouched
    d = router.to_dict()
    d["features"].append({"kind": "attention", "heads": None, "top_k": 2, "columns": list(ATTENTION_COLUMNS)})
    d["numeric"] += list(ATTENTION_COLUMNS)
    d["mean"] += [0.0] * 4
    d["scale"] += [1.0] * 4
    d["weights"] += [[0.0] * 3] * 4
    with_attention = Router.from_dict(d)
    adapters = {"a": paths["a"], "b": paths["b"], "base": None}
    outs = {}
    for r in (router, with_attention):
        with al.route(pipe, r, adapters=adapters) as log:
            outs[r] = [generate(pipe, p) for p in ("rock anthem", "smooth jazz", "folk ballad")]
        assert log.choices == ["a", "b", "base"]
        assert type(pipe).__name__ == "AceStepPipeline" and not getattr(pipe.transformer, "peft_config", {})
    tr = pipe.transformer
    by_hand = []
    for name, prompt in (("a", "rock anthem"), ("b", "smooth jazz")):
        tr.load_lora_adapter(paths[name], adapter_name="by_hand", use_safetensors=True)
        tr.set_adapters(["by_hand"])
        by_hand.append(generate(pipe, prompt))
        tr.delete_adapters(["by_hand"])
    by_hand.append(generate(pipe, "folk ballad"))
    for r in (router, with_attention):
        assert all(torch.equal(x, y) for x, y in zip(outs[r], by_hand))
    assert not torch.equal(by_hand[0], generate(pipe, "rock anthem"))  # the adapter changed the output


def test_route_refuses_a_batch_routed_two_ways(tiny):
    pipe, paths = tiny
    df, texts = planted(n_per=3, seeds=1)
    router = fit_router(df, ["text"], prompts=texts)
    with pytest.raises(ValueError, match="routed to different variants"):
        with al.route(pipe, router, adapters={"a": paths["a"], "b": paths["b"], "c": None}):
            pipe(prompt=["rock", "jazz"], generator=[torch.Generator().manual_seed(0)] * 2, **CALL)
    assert type(pipe).__name__ == "AceStepPipeline"


def test_attention_features_are_the_first_step_of_a_generation(tiny):
    pipe, _ = tiny
    info = PromptInfo("x", "rock anthem", CALL["lyrics"], CALL["audio_duration"])
    feats = al.eval.attention_features(pipe, [info], seed=3, top_k=2, generate_kwargs={"guidance_scale": 1.0})
    with al.capture(pipe, steps=[0]) as cap:
        pipe(prompt="rock anthem", generator=torch.Generator().manual_seed(3), output_type="latent", **CALL)
    from attnlens.eval.router_features import AttentionSpec

    assert feats.loc["x"].to_dict() == attention_rows(cap, AttentionSpec(top_k=2))[0]
    assert feats.attrs["attnlens_feature"]["kind"] == "attention"


def test_merge_grid_writes_exact_combinations(tiny, tmp_path):
    from attnlens.train.lora import delta_weights

    _, paths = tiny
    grid = merge_grid(paths, tmp_path, step=0.5)
    assert list(grid) == ["merge[a@0.5;b@0.5]"]
    da, db, dm = delta_weights(paths["a"]), delta_weights(paths["b"]), delta_weights(grid["merge[a@0.5;b@0.5]"])
    assert all(torch.allclose(dm[m], 0.5 * da[m] + 0.5 * db[m], atol=1e-6) for m in da)
    assert len(merge_grid({**paths, "c": paths["a"]}, tmp_path / "q", step=0.25)) == 12  # 3 pairs x 3 + 3 triples
    with pytest.raises(ValueError, match="step must divide 1"):
        merge_grid(paths, tmp_path, step=0.3)


def test_merged_variants_are_chosen_on_training_prompts():
    df, texts = planted(n_per=3, seeds=1)
    extra = []
    for pid in texts:
        extra += [{"prompt_id": pid, "variant": "merge[a@0.5;b@0.5]", "seed": 0, "wer": 0.3}]
        extra += [{"prompt_id": pid, "variant": "merge[a@0.5;c@0.5]", "seed": 0, "wer": 0.4}]
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    rep = evaluate_router(df, ["text"], prompts=texts, merged=["merge[a@0.5;b@0.5]", "merge[a@0.5;c@0.5]"])
    assert rep.summary.loc["merged (train)", "chosen"] == "merge[a@0.5;b@0.5]"
    assert rep.summary.loc["merged (train)", "wer_mean"] == pytest.approx(0.3)
    assert "merge[a@0.5;b@0.5]" not in rep.per_prompt["routed"].tolist()
