"""Training the embedded demo model from scratch on the "tiny songs" task (``scripts/train_demo.py``).

Everything but the text encoder trains: the DiT and the condition encoder (text projector, lyric encoder, timbre
encoder). Per step (all items of a batch have the same number of words, so no sequence is padded)::

    x0 = rendered latents [B, 100, 8],  noise ~ N(0, I),  t = 3u / (1 + 2u), u ~ U(0, 1)   (turbo shift 3)
    x_t = t · noise + (1 - t) · x0;     v_θ = DiT(x_t, t, r = t, encoder_hidden_states, context_latents)
    loss = mean((v_θ - (noise - x0))²)                                       (attnlens.train.flow)

The conditioning is the pipeline's, computed piecewise: caption through the frozen text encoder (the 30 possible
captions are encoded once), lyric tokens through its embedding table only, then the condition encoder's
projector / lyric encoder / timbre encoder and the packing ``[lyric | timbre | caption]`` (with no padding the
packing is a concatenation; the timbre input is the all-zero silence latent, identical for every item, so the
timbre encoder runs once per step). :func:`check_condition_matches_pipeline` verifies this against
``pipe.condition_encoder(...)`` as the pipeline calls it.

The demo model's whole training recipe (the head guide, the task's groups, the loop) reads as one procedure; hence
over 400 lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..families import resolve
from ..taps.hooks import HookScope, HookSet
from ..taps.query_key import tap_query_key

DURATION_S = 4.0


@dataclass
class Group:
    """Training examples with the same number of words: equal lyric lengths, no padding."""

    n_words: int
    latents: torch.Tensor  # [N, T, C] float32
    lyric_ids: torch.Tensor  # [N, L] int64
    caption_idx: torch.Tensor  # [N] int64 (into the caption table)
    lyric_pos: list[int] | None = None  # packed key positions of the sung words (the same for every item)
    frame_word: torch.Tensor | None = None  # [N, T_dit] int64: word sung at each DiT frame, -1 in gaps/lead-in/tail


def _render_chunk(args: tuple[dict[str, Any], int, int]) -> list[dict[str, Any]]:
    from attnlens.demo.task import TinySongs

    cfg, n, seed = args
    return TinySongs(**cfg).make_dataset(n, seed=seed, split="train")


def render_examples(task_cfg: dict[str, Any], n: int, seed: int, workers: int = 1, chunk: int = 2000) -> list[dict]:
    """``n`` training examples in chunks of ``chunk`` (chunk ``i`` uses dataset seed ``seed * 1000 + i``)."""
    jobs = [(task_cfg, min(chunk, n - i * chunk), seed * 1000 + i) for i in range(math.ceil(n / chunk))]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return [ex for part in parts for ex in part]


def caption_table(task: Any) -> list[str]:
    """Every caption the task can produce, in a fixed order."""
    return [task.format_caption(v, e) for v in task.voice_names for e in task.extras]


@torch.no_grad()
def encode_captions(pipe: Any, captions: Sequence[str], device: Any) -> torch.Tensor:
    """Caption hidden states ``[K, Lc, text_hidden]`` through the whole (frozen) text encoder, as the pipeline."""
    texts = [
        pipe._format_prompt(prompt=c, lyrics="", vocal_language="en", audio_duration=DURATION_S)[0] for c in captions
    ]
    tok = pipe.tokenizer(texts, padding="longest", return_tensors="pt")
    if not bool(tok.attention_mask.all()):
        raise ValueError("captions tokenize to different lengths: the caption cache needs equal lengths")
    return pipe.text_encoder(input_ids=tok.input_ids.to(device)).last_hidden_state.float()


def lyric_ids(pipe: Any, lyrics: Sequence[str]) -> torch.Tensor:
    """Token ids ``[N, L]`` of the pipeline's lyric strings (all must have the same length)."""
    strs = [
        pipe._format_prompt(prompt="", lyrics=ly, vocal_language="en", audio_duration=DURATION_S)[1] for ly in lyrics
    ]
    tok = pipe.tokenizer(strs, padding="longest", return_tensors="pt")
    if not bool(tok.attention_mask.all()):
        raise ValueError("lyrics of one group tokenize to different lengths (a word is not a single token?)")
    return tok.input_ids


def make_groups(pipe: Any, task: Any, examples: Sequence[dict[str, Any]]) -> list[Group]:
    """Group examples by word count; latents, lyric ids and caption indices as tensors."""
    caps = {c: i for i, c in enumerate(caption_table(task))}
    by_n: dict[int, list[dict[str, Any]]] = {}
    for ex in examples:
        by_n.setdefault(len(ex["words"]), []).append(ex)
    from attnlens.train.conditioning import encode_condition

    patch = int(pipe.transformer.config.patch_size)
    groups = []
    for n, exs in sorted(by_n.items()):
        cond = encode_condition(pipe, [exs[0]["caption"]], [exs[0]["lyrics"]], DURATION_S)
        pos = cond.lyric_positions()[0]
        if len(pos) != n:
            raise AssertionError(f"{len(pos)} sung lyric keys for {n} words in {exs[0]['lyrics']!r}")
        groups.append(
            Group(
                n_words=n,
                latents=torch.from_numpy(np.stack([ex["latents"] for ex in exs])).float(),
                lyric_ids=lyric_ids(pipe, [ex["lyrics"] for ex in exs]),
                caption_idx=torch.tensor([caps[ex["caption"]] for ex in exs], dtype=torch.long),
                lyric_pos=pos,
                frame_word=torch.from_numpy(np.stack([frame_words(ex, patch) for ex in exs])),
            )
        )
    return groups


def condition(pipe: Any, caption_hidden: torch.Tensor, ids: torch.Tensor, caption_idx: torch.Tensor) -> torch.Tensor:
    """``encoder_hidden_states`` ``[B, L + 1 + Lc, hidden]`` = ``[lyric | timbre | caption]`` (differentiable)."""
    ce = pipe.condition_encoder
    B = ids.shape[0]
    dev = ids.device
    with torch.no_grad():
        lyric_in = pipe.text_encoder.get_input_embeddings()(ids)  # [B, L, text_hidden]
    lyric = ce.lyric_encoder(inputs_embeds=lyric_in, attention_mask=torch.ones(ids.shape, dtype=torch.bool, device=dev))
    frames = math.ceil(30 * pipe.latents_per_second)
    ref = ce.silence_latent[:, :frames, :].to(device=dev, dtype=lyric_in.dtype)  # [1, frames, timbre_dim]
    timbre, _ = ce.timbre_encoder(ref, torch.zeros(1, dtype=torch.long, device=dev))  # [1, 1, hidden]
    text = ce.text_projector(caption_hidden[caption_idx])  # [B, Lc, hidden]
    return torch.cat([lyric, timbre.expand(B, -1, -1), text], dim=1)


@torch.no_grad()
def check_condition_matches_pipeline(pipe: Any, task: Any, examples: Sequence[dict[str, Any]]) -> float:
    """Largest absolute difference between :func:`condition` and the pipeline's own conditioning (same word count)."""
    from attnlens.train.conditioning import encode_condition

    captions = [ex["caption"] for ex in examples]
    lyrics = [ex["lyrics"] for ex in examples]
    if len({len(ex["words"]) for ex in examples}) != 1:
        raise ValueError("examples must all have the same number of words")
    dev = pipe.transformer.device
    ref = encode_condition(pipe, captions, lyrics, DURATION_S, device=dev, dtype=torch.float32).encoder_hidden_states
    table = caption_table(task)
    cap_h = encode_captions(pipe, table, dev)
    idx = torch.tensor([table.index(c) for c in captions], device=dev)
    ours = condition(pipe, cap_h, lyric_ids(pipe, lyrics).to(dev), idx)
    if ours.shape != ref.shape:
        raise AssertionError(f"conditioning shapes differ: ours {tuple(ours.shape)}, pipeline {tuple(ref.shape)}")
    return float((ours - ref.float()).abs().max())


def frame_words(ex: dict[str, Any], patch: int = 2) -> np.ndarray:
    """Word index sung at each DiT frame ``[T // patch]`` (int64; -1 where no word is sung).

    DiT frame ``f`` covers latent frames ``patch·f .. patch·f + patch - 1``; it takes word ``i`` when its first latent
    frame lies in ``[word_starts[i], word_ends[i])``.
    """
    T = len(ex["latents"]) // patch
    out = np.full(T, -1, dtype=np.int64)
    first = np.arange(T) * patch
    for i, (a, b) in enumerate(zip(ex["word_starts"], ex["word_ends"])):
        out[(first >= a) & (first < b)] = i
    return out


class HeadGuide(HookScope):
    """Guided-attention loss on one cross-attention head (the demo model's known alignment head).

    For layer ``layer``, query head ``head`` and the sung lyric keys ``L`` of the batch (same positions for every
    item), with ``s_fj = scale · q_f · k_j`` and target word ``w(f)`` (:func:`frame_words`)::

        loss = mean over frames with a word of  -log softmax_{j in L}(s_f)[w(f)]

    Only the lyric-renormalized distribution of that head is trained; frames in gaps take no loss. Hooks on the
    layer's ``cross_attn.norm_q`` / ``norm_k`` (through the adapter), removed when the block ends.
    """

    def __init__(self, transformer: Any, layer: int, head: int, lyric_pos: list[int], targets: torch.Tensor):
        super().__init__()
        self.adapter = resolve(transformer)
        f = self.adapter.facts
        self.layer, self.head, self.kvh = layer, head, head // f.group
        self.scale = f.scale
        self.pos = torch.as_tensor(lyric_pos, dtype=torch.long)
        self.targets = targets  # [B, T_dit]
        self._pending_q: dict[int, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None

    def _register(self, hooks: HookSet) -> None:
        tap_query_key(hooks, self.adapter, self.layer, self._on_pair, lambda: self.loss is None, self._pending_q)

    def _exited(self, exc_type) -> None:
        self._pending_q.clear()

    def _on_pair(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:  # q [B, T, H, D], k [B, S, KVH, D]
        q = q[:, :, self.head].float()  # [B, T, D]
        k = k[:, self.pos.to(k.device), self.kvh].float()  # [B, n, D]
        logp = torch.log_softmax(torch.einsum("btd,bnd->btn", q, k) * self.scale, dim=-1)  # [B, T, n]
        tgt = self.targets.to(logp.device)
        ok = tgt >= 0
        picked = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]  # [B, T]
        self.loss = -(picked * ok).sum() / ok.sum().clamp(min=1)


def _to(x: torch.Tensor | None, dev: Any) -> torch.Tensor | None:
    return None if x is None else x.to(dev)


def trainable_modules(pipe: Any) -> list[torch.nn.Module]:
    ce = pipe.condition_encoder
    return [pipe.transformer, ce.text_projector, ce.lyric_encoder, ce.timbre_encoder]


def train(
    pipe: Any,
    task: Any,
    groups: Sequence[Group],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    warmup: int = 200,
    weight_decay: float = 0.01,
    ema_decay: float = 0.999,
    shift: float = 3.0,
    seed: int = 0,
    bf16: bool = False,
    log_every: int = 100,
    max_seconds: float | None = None,
    entropy_weight: float = 0.0,
    guide_weight: float = 0.0,
    guide_head: tuple[int, int] = (1, 0),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Flow-matching training of the DiT and condition encoder; the EMA weights are copied in at the end.

    Learning rate: linear warmup over ``warmup`` steps, then cosine to 0 at ``steps``. Groups are drawn in
    proportion to their size, items uniformly within the group. ``max_seconds`` stops early (the record says
    where). ``entropy_weight`` > 0 adds ``entropy_weight × mean normalized lyric-only cross-attention entropy``
    (:class:`attnlens.reducers.differentiable.EntropyTap`, ``keys="lyrics"``, every layer; groups with a single
    sung word take no penalty). ``guide_weight`` > 0 adds ``guide_weight ×`` the :class:`HeadGuide` loss of
    ``guide_head = (layer, query head)`` on groups with at least 2 words. Returns the training record (losses,
    steps done, seconds).
    """
    import contextlib

    from attnlens.reducers.differentiable import EntropyTap
    from attnlens.train.flow import flow_matching_loss, noisy_latents, shift_time

    dev = pipe.transformer.device
    torch.set_flush_denormal(True)
    gen = torch.Generator(device="cpu").manual_seed(seed)  # group choice
    dgen = torch.Generator(device=dev).manual_seed(seed)  # items, noise and times (on the training device)
    torch.manual_seed(seed)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.condition_encoder.requires_grad_(False)
    mods = trainable_modules(pipe)
    params = [p for m in mods for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    for m in mods:
        m.train()
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))

    total = [steps if steps > 0 else 10**9]  # steps == 0: decided from the measured speed (needs max_seconds)
    if steps <= 0 and max_seconds is None:
        raise ValueError("steps must be > 0 unless max_seconds is given (then the step count is fitted to it)")

    def lr_at(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total[0] - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    cap_h = encode_captions(pipe, caption_table(task), dev)
    gdev = [
        Group(
            g.n_words,
            g.latents.to(dev),
            g.lyric_ids.to(dev),
            g.caption_idx.to(dev),
            g.lyric_pos,
            _to(g.frame_word, dev),
        )
        for g in groups
    ]
    sizes = torch.tensor([len(g.latents) for g in groups], dtype=torch.float64)
    probs = sizes / sizes.sum()
    acoustic = pipe.transformer.config.audio_acoustic_hidden_dim
    losses: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    done = 0
    step = 0
    while step < total[0]:
        gi = int(torch.multinomial(probs, 1, generator=gen))
        g = gdev[gi]
        idx = torch.randint(len(g.latents), (batch_size,), generator=dgen, device=dev)
        x0 = g.latents[idx]  # [B, T, C]
        B, T, _ = x0.shape
        noise = torch.randn(x0.shape, generator=dgen, device=dev)
        t = shift_time(torch.rand(B, generator=dgen, device=dev, dtype=torch.float64), shift).float()
        xt = noisy_latents(x0, noise, t)
        src = torch.zeros(B, T, acoustic, device=dev)  # the zero silence latent, tiled
        ctx = torch.cat([src, torch.ones(B, T, acoustic, device=dev)], dim=-1)
        use_tap = entropy_weight > 0 and g.lyric_pos is not None and len(g.lyric_pos) >= 2
        tap = (
            EntropyTap(pipe.transformer, keys="lyrics", lyric_positions=[g.lyric_pos] * batch_size) if use_tap else None
        )
        use_guide = guide_weight > 0 and g.frame_word is not None and g.n_words >= 2
        guide = (
            HeadGuide(pipe.transformer, guide_head[0], guide_head[1], g.lyric_pos, g.frame_word[idx])
            if use_guide
            else None
        )
        with (
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16),
            tap or contextlib.nullcontext(),
            guide or contextlib.nullcontext(),
        ):
            ehs = condition(pipe, cap_h, g.lyric_ids[idx], g.caption_idx[idx])
            pred = pipe.transformer(
                hidden_states=xt,
                timestep=t,
                timestep_r=t,
                encoder_hidden_states=ehs,
                context_latents=ctx,
                return_dict=False,
            )[0]
        loss = flow_matching_loss(pred, x0, noise)
        if tap is not None:
            ent = tap.mean()
            loss = loss + entropy_weight * ent.float()
        if guide is not None:
            loss = loss + guide_weight * guide.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
        step += 1
        done = step
        if steps <= 0 and done == 50:
            assert max_seconds is not None
            if dev.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - t0) / done
            total[0] = max(done + 1, int(0.97 * max_seconds / per_step))
            log(f"{per_step * 1e3:.1f} ms/step: training for {total[0]} steps")
        if done % log_every == 0:
            losses.append((done, float(loss.detach())))
            ent_s = f"  lyric entropy {float(ent.detach()):.3f}" if tap is not None else ""
            ent_s += f"  guide {float(guide.loss.detach()):.3f}" if guide is not None else ""
            log(
                f"step {done:6d}  loss {losses[-1][1]:.4f}{ent_s}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - t0:7.1f} s"
            )
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            log(f"stopping at step {done}: {max_seconds} s reached")
            break
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in mods:
        m.eval()
    pipe.transformer.eval()
    pipe.condition_encoder.eval()
    for p in params:
        p.requires_grad_(False)
    return {
        "steps_planned": total[0],
        "steps_done": done,
        "batch_size": batch_size,
        "lr": lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "ema_decay": ema_decay,
        "shift": shift,
        "seed": seed,
        "bf16": bf16,
        "entropy_weight": entropy_weight,
        "guide_weight": guide_weight,
        "guide_head": list(guide_head),
        "seconds": round(seconds, 1),
        "loss_log": losses,
        "final_loss": losses[-1][1] if losses else None,
    }


@torch.no_grad()
def generate(
    pipe: Any, captions: Sequence[str], lyrics: Sequence[str], seeds: Sequence[int], steps: int = 8
) -> np.ndarray:
    """Latents ``[B, T, C]`` (float32 numpy) for a batch of same-length lines, one CPU generator per item."""
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    T = math.ceil(DURATION_S * pipe.latents_per_second)
    C = pipe.transformer.config.audio_acoustic_hidden_dim
    lat = torch.stack([torch.randn(T, C, generator=g) for g in gens]).to(pipe.transformer.device)
    out = pipe(
        prompt=list(captions),
        lyrics=list(lyrics),
        audio_duration=DURATION_S,
        num_inference_steps=steps,
        guidance_scale=1.0,
        latents=lat,
        output_type="latent",
    ).audios
    return out.float().cpu().numpy()


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def quick_eval(pipe: Any, task: Any, n: int = 200, seed: int = 1, batch: int = 64) -> dict[str, float]:
    """WER (decoder) of generated held-out lines, batched by word count (a training monitor, not the test)."""
    from attnlens.demo.decoder import WordDecoder

    dec = WordDecoder(task)
    exs = task.make_dataset(n, seed=seed, split="test")
    errs = words = 0
    by_n: dict[int, list[int]] = {}
    for i, ex in enumerate(exs):
        by_n.setdefault(len(ex["words"]), []).append(i)
    for idxs in by_n.values():
        for k in range(0, len(idxs), batch):
            part = idxs[k : k + batch]
            lat = generate(pipe, [exs[i]["caption"] for i in part], [exs[i]["lyrics"] for i in part], part)
            for j, i in enumerate(part):
                hyp = dec.decode(lat[j]).words
                errs += word_errors(exs[i]["words"], hyp)
                words += len(exs[i]["words"])
    return {"wer": errs / words, "lines": n}
