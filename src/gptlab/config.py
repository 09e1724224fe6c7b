"""GPTConfig: every architecture switch in one validated dataclass; SWITCHES, the table that declares each switch
once; named presets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .presets import MODEL_PRESETS as PRESETS  # the model presets, declared with the run and compare presets

POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
MOE_SCORES = ("softmax", "sigmoid")
MOE_ROUTER_FIELDS = ("moe_score", "moe_groups", "moe_topk_groups", "moe_choice_bias", "moe_scale")  # DeepSeek-V3's
# The settings of experts: they must keep their defaults without experts (n_expert=0), where they would do nothing.
MOE_ONLY_FIELDS = ("expert_top_k", "expert_hidden", "n_shared_expert", "moe_dense_layers", "moe_renorm",
                   *MOE_ROUTER_FIELDS)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """Hidden size that gives SwiGLU (3 matrices) the parameters of a 4x GELU MLP (2 matrices), rounded up to a
    multiple of 64 (exact at n_embd = 768; +12.5% at 128)."""
    hidden = int(8 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def equal_params_swiglu_hidden(config: GPTConfig) -> int:
    """SwiGLU hidden size h whose three matrices (and biases) hold as many parameters as the baseline's MLP:
    3 n h + (2 h + n) = 2 n m + (m + n) for GELU hidden m, so h = m (2 n + 1) / (3 n + 2) with biases."""
    n, m = config.n_embd, config.mlp_hidden
    return round(m * (2 * n + 1) / (3 * n + 2)) if config.bias else round(2 * m / 3)


@dataclass
class GPTConfig:
    """All of the model's architecture. The defaults are GPT-2 (124M)."""

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence seen in training; the size of learned position tables
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms (GPT-2: True; Llama: False)
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix
    n_kv_head: int | None = None  # None -> n_head (MHA); 1 -> multi-query; else grouped-query
    head_dim: int | None = None  # None -> n_embd // n_head; Qwen3 sets it apart (q has n_head * head_dim channels)
    pos_emb: str = "learned"  # "learned" (GPT-2) or "rope"
    rope_theta: float = 10000.0
    window: int | None = None  # sliding window: query i sees keys j with i - window < j <= i
    # Local/global layers: one letter per layer, repeated over the layers; L slides by `window`, G attends to every
    # earlier position. None: every layer as `window` says. "LG" alternates (Gemma 2), "LLLLLG" is Gemma 3's 5:1.
    layer_pattern: str | None = None
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (tanh approximation, as GPT-2) or "swiglu"
    mlp_hidden: int | None = None  # None -> 4*n_embd for gelu, ~8/3*n_embd (multiple of 64) for swiglu
    qk_norm: bool = False  # RMSNorm over each head's q and k, before RoPE (Qwen3, OLMo 2)
    # Mixture of experts (docs/moe.md): the fields after n_expert apply only when it is > 0.
    n_expert: int = 0  # 0: one dense MLP per layer (GPT-2); else MLPs per MoE layer, expert_top_k of them per token
    expert_top_k: int = 2  # experts each token runs through (Mixtral: 2)
    expert_hidden: int | None = None  # an expert's hidden size; None -> mlp_hidden
    n_shared_expert: int = 0  # experts every token runs through as well, unweighted (DeepSeek)
    moe_dense_layers: tuple[int, ...] = ()  # layers that keep the dense MLP of mlp_hidden (Qwen3-MoE's mlp_only_layers)
    moe_renorm: bool = True  # rescale the top-k router weights to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob)
    # DeepSeek-V3's router (docs/moe.md): the score of each expert, how many groups of experts a token may choose
    # from, a per-expert bias on the scores that choose (not on the weights), a factor on the weights.
    moe_score: str = "softmax"  # "softmax" over the experts (Mixtral), or "sigmoid" of each logit (DeepSeek-V3)
    moe_groups: int = 1  # experts in this many equal groups; a group's score is the sum of its top-2 (n_group)
    moe_topk_groups: int = 1  # the top k come from the best this-many groups only (DeepSeek's topk_group)
    moe_choice_bias: bool = False  # a per-expert bias added to the scores for choosing only (e_score_correction_bias)
    moe_scale: float = 1.0  # multiplies the routed experts' weights (DeepSeek's routed_scaling_factor)
    # Multi-head latent attention (DeepSeek-V2/V3): keys and values are up-projected from one latent of
    # kv_lora_rank numbers per token, which is all the KV cache keeps, with a RoPE key of qk_rope_head_dim shared
    # by all heads. None: ordinary attention. The other four only apply with it (DeepSeek's names).
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None  # a low-rank query too (through its own RMSNorm); None: one q projection
    qk_nope_head_dim: int | None = None  # per head: key/query channels without RoPE, up-projected from the latent
    qk_rope_head_dim: int | None = None  # per head: query channels with RoPE, against the shared RoPE key
    v_head_dim: int | None = None  # per head: value channels, up-projected from the latent

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None and _positive_int(self.n_embd) and _positive_int(self.n_head):
            if self.n_embd % self.n_head == 0:  # else validate says n_embd must be divisible by n_head
                self.head_dim = self.n_embd // self.n_head
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.n_embd if self.mlp == "gelu" else _swiglu_hidden(self.n_embd)
        if isinstance(self.moe_dense_layers, list):  # from JSON
            self.moe_dense_layers = tuple(self.moe_dense_layers)
        self.validate()

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """The layers whose MLP is a mixture of experts (none when n_expert is 0)."""
        return tuple(i for i in range(self.n_layer) if self.n_expert and i not in self.moe_dense_layers)

    @property
    def expert_width(self) -> int:
        """An expert's hidden size: expert_hidden, or mlp_hidden when it is None."""
        return self.expert_hidden or self.mlp_hidden

    def validate(self) -> None:
        """Raise ValueError naming the field and what it may be."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_kv_head", "mlp_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("dropout", "rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for name in ("bias", "tie_embeddings", "qk_norm"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.head_dim is None:  # not set, and n_embd does not split into n_head heads
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"allowed n_head: divisors of {self.n_embd}"
            )
        if not _positive_int(self.head_dim):
            raise ValueError(f"head_dim must be None (n_embd / n_head) or a positive integer, got {self.head_dim!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}); "
                f"allowed n_kv_head: {[d for d in range(1, self.n_head + 1) if self.n_head % d == 0]}"
            )
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"pos_emb must be one of {POS_EMBS}, got {self.pos_emb!r}")
        if self.pos_emb == "rope":
            if self.head_dim % 2 and self.kv_lora_rank is None:  # MLA rotates qk_rope_head_dim channels instead
                raise ValueError(
                    f"pos_emb='rope' needs an even head dim (n_embd / n_head), got {self.head_dim}; "
                    "change n_embd or n_head"
                )
            if not self.rope_theta > 0:
                raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.window is not None and (
            isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1
        ):
            raise ValueError(f"window must be None (full causal attention) or an integer >= 1, got {self.window!r}")
        self._validate_layer_pattern()
        self._validate_mla()
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        self._validate_moe()

    def _validate_moe(self) -> None:
        if not _count(self.n_expert):
            raise ValueError(f"n_expert must be 0 (a dense MLP per layer) or a positive integer, got {self.n_expert!r}")
        if not self.n_expert:  # a dense model: expert settings must not silently do nothing
            changed = [f.name for f in dataclasses.fields(self)
                       if f.name in MOE_ONLY_FIELDS and getattr(self, f.name) != f.default]
            if changed:
                raise ValueError(f"{', '.join(changed)}: settings of experts, which need n_expert > 0 (or drop them)")
            return
        if not _positive_int(self.expert_top_k) or self.expert_top_k > self.n_expert:
            raise ValueError(f"expert_top_k must be in 1..n_expert ({self.n_expert}), got {self.expert_top_k!r}")
        if not (self.expert_hidden is None or _positive_int(self.expert_hidden)):
            raise ValueError(f"expert_hidden must be None (mlp_hidden) or an integer >= 1, got {self.expert_hidden!r}")
        if not _count(self.n_shared_expert):
            raise ValueError(f"n_shared_expert must be an integer >= 0, got {self.n_shared_expert!r}")
        dense = self.moe_dense_layers
        if not (isinstance(dense, tuple) and len(set(dense)) == len(dense)
                and all(_count(i) and i < self.n_layer for i in dense)):
            raise ValueError(f"moe_dense_layers must list distinct layers in 0..{self.n_layer - 1}, got {dense!r}")
        for name in ("moe_renorm", "moe_choice_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self._validate_router()

    def _validate_router(self) -> None:
        if self.moe_score not in MOE_SCORES:
            raise ValueError(f"moe_score must be one of {MOE_SCORES}, got {self.moe_score!r}")
        g, n = self.moe_groups, self.n_expert
        if not _positive_int(g) or n % g or (g > 1 and n // g < 2):
            allowed = [d for d in range(1, n + 1) if n % d == 0 and (d == 1 or n // d >= 2)]
            raise ValueError(f"moe_groups must split n_expert ({n}) into equal groups of at least 2 (a group scores "
                             f"by its top 2), got {g!r}; allowed moe_groups: {allowed}")
        if not _positive_int(self.moe_topk_groups) or self.moe_topk_groups > g:
            raise ValueError(f"moe_topk_groups must be in 1..moe_groups ({g}), got {self.moe_topk_groups!r}")
        if self.expert_top_k > self.moe_topk_groups * (n // g):
            raise ValueError(f"expert_top_k ({self.expert_top_k}) must be at most the experts of moe_topk_groups "
                             f"groups: {self.moe_topk_groups} x {n // g}; raise moe_topk_groups or lower expert_top_k")
        if isinstance(self.moe_scale, bool) or not isinstance(self.moe_scale, (int, float)) or not self.moe_scale > 0:
            raise ValueError(f"moe_scale must be a number > 0, got {self.moe_scale!r}")

    def _validate_layer_pattern(self) -> None:
        p = self.layer_pattern
        if p is None:
            return
        if not isinstance(p, str) or not p or set(p) - {"L", "G"}:
            raise ValueError(f"layer_pattern must be None or letters L (local) and G (global), one per layer and "
                             f"repeated over the layers, e.g. 'LLLLLG'; got {p!r}")
        if set(p) != {"L", "G"}:
            raise ValueError(f"layer_pattern {p!r} must mix L and G: all local is `window` alone, all global is "
                             "window=None")
        if self.window is None:
            raise ValueError(f"layer_pattern {p!r} needs window, the sliding window of its local (L) layers")

    def _validate_mla(self) -> None:
        dims = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is None:
            given = [n for n in ("q_lora_rank", *dims) if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to multi-head latent attention: set kv_lora_rank "
                                 "too, or leave them None")
            return
        for name in ("kv_lora_rank", *dims):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer with kv_lora_rank (MLA), got "
                                 f"{getattr(self, name)!r}; set kv_lora_rank, {', '.join(dims)}")
        if self.q_lora_rank is not None and not _positive_int(self.q_lora_rank):
            raise ValueError(f"q_lora_rank must be None (one q projection) or a positive integer, got "
                             f"{self.q_lora_rank!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        if self.qk_norm:
            raise ValueError("qk_norm cannot go with kv_lora_rank (MLA): decoding folds the key up-projection into "
                             "the query, which a norm over each key head would break; MLA normalizes its latents")

    @property
    def rotary_dim(self) -> int:
        """Channels of each head that RoPE rotates: head_dim, or MLA's qk_rope_head_dim."""
        return self.head_dim if self.kv_lora_rank is None else self.qk_rope_head_dim

    def layer_window(self, layer: int) -> int | None:
        """The window layer `layer` (0-based) slides by: `window`, or None (full attention) on a global layer."""
        if self.layer_pattern is not None and self.layer_pattern[layer % len(self.layer_pattern)] == "G":
            return None
        return self.window

    def replace(self, **changes: Any) -> GPTConfig:
        """A copy with some fields changed (and validated). Derived defaults are recomputed."""
        d = self.to_dict()
        if "mlp" in changes or "n_embd" in changes:
            d.setdefault("mlp_hidden", None)
            if "mlp_hidden" not in changes:
                d["mlp_hidden"] = None
        if "n_head" in changes and "n_kv_head" not in changes and self.n_kv_head == self.n_head:
            d["n_kv_head"] = None
        if ({"n_embd", "n_head"} & set(changes) and "head_dim" not in changes
                and self.head_dim == self.n_embd // self.n_head):  # derived: derive it again
            d["head_dim"] = None
        d.update(changes)
        return GPTConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON holds them (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """GPTConfig(**d), with a clear error for keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; allowed fields: {sorted(names)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); restore or re-save the config") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object of GPTConfig fields")
        return cls.from_dict(d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset (see PRESETS) with some fields changed: GPTConfig.from_preset("baby", pos_emb="rope")."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed presets: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------------------ the switches


@dataclass(frozen=True)
class Variant:
    """One way to turn a switch on, as `gptlab compare` trains it against the GPT-2 baseline."""

    name: str  # the compare grid's name for it: --grid=rope,gqa
    label: str  # how reports and plots name it
    changes: Callable[[GPTConfig], dict[str, Any]]  # the fields it sets, given the baseline's config


@dataclass(frozen=True)
class Switch:
    """One architecture switch: a GPTConfig field whose GPT-2 value modern LLMs change. Everything that lists the
    switches reads SWITCHES: compare's default grid, `gptlab info`'s description, export's formats, the docs index
    and the README's table (docs/sync_docs.py), the test combinations (tests/conftest.py)."""

    field: str  # the GPTConfig field; its default is GPT-2's value
    gpt2: str  # GPT-2's value, as the docs show it
    modern: str  # the modern value(s), as the docs show them
    summary: str  # what it changes, one line
    doc: str  # its page in docs/
    title: str  # that page's title
    variants: tuple[Variant, ...]  # the compare grid's variants; the first one joins "modern" if in_modern
    # How `gptlab info` names the field's value; None leaves it out (a newer switch need not be named when off,
    # which keeps every description of the models before it as it was).
    describe: Callable[[GPTConfig], str | None]
    # Hugging Face formats that can hold GPT-2's value, and the modern value(s). Export is deny-by-default: a
    # format not named here does not hold the setting (hf.py).
    hf_gpt2: tuple[str, ...] = ()
    hf_modern: tuple[str, ...] = ()
    in_modern: bool = True  # part of compare's "modern (all)" variant
    builds_on: tuple[str, ...] = ()  # fields of other switches that its variants set too (its own needs them)

    def is_on(self, config: GPTConfig) -> bool:
        """Whether config's value differs from GPT-2's at the same sizes (n_kv_head < n_head is on)."""
        return getattr(config, self.field) != getattr(gpt2_reference(config), self.field)


def _describe_heads(c: GPTConfig) -> str:
    if c.n_kv_head == c.n_head:
        heads = f"{c.n_head} heads (MHA)"
    elif c.n_kv_head == 1:
        heads = f"{c.n_head} query heads, 1 KV head (MQA)"
    else:
        heads = f"{c.n_head} query heads, {c.n_kv_head} KV heads (GQA, {c.n_head // c.n_kv_head} per group)"
    return heads if c.kv_lora_rank is not None else f"{heads} of dim {c.head_dim}"  # MLA: its own widths


def _describe_mla(c: GPTConfig) -> str | None:
    if c.kv_lora_rank is None:
        return None
    q = "" if c.q_lora_rank is None else f", query rank {c.q_lora_rank}"
    return (f"MLA (cached latent {c.kv_lora_rank} + shared RoPE key {c.qk_rope_head_dim}; per head q·k "
            f"{c.qk_nope_head_dim}+{c.qk_rope_head_dim}, v {c.v_head_dim}{q})")


def _mla_changes(c: GPTConfig) -> dict[str, Any]:
    """MLA at GQA-2's KV cache: latent + RoPE key = 2 x 2 x head_dim numbers per token and layer."""
    rope = max(2, c.head_dim // 4 * 2)  # half the head, even
    return {"kv_lora_rank": 4 * c.head_dim - rope, "qk_rope_head_dim": rope, "qk_nope_head_dim": c.head_dim,
            "v_head_dim": c.head_dim}


def _describe_moe(c: GPTConfig) -> str | None:
    if not c.n_expert:
        return None  # the dense MLP: every older description stays as it was
    shared = f" + {c.n_shared_expert} shared" if c.n_shared_expert else ""
    dense = f", dense layers {list(c.moe_dense_layers)}" if c.moe_dense_layers else ""
    rule = "renormalised" if c.moe_renorm else c.moe_score
    # DeepSeek-V3's router settings are named only when set: every description before them stays as it was.
    rule = ("sigmoid scores, " if c.moe_score == "sigmoid" and c.moe_renorm else "") + f"{rule} weights"
    rule += f" x {c.moe_scale:g}" if c.moe_scale != 1 else ""
    rule += f", top-{c.moe_topk_groups} of {c.moe_groups} groups" if c.moe_groups > 1 else ""
    rule += ", choice bias" if c.moe_choice_bias else ""
    return f"MoE: top-{c.expert_top_k} of {c.n_expert} experts{shared} (hidden {c.expert_width}, {rule}){dense}"


MOE_FORMATS = ("mixtral", "qwen3_moe")  # the Hugging Face formats with experts (hf_moe.py)

SWITCHES: tuple[Switch, ...] = (
    Switch(
        field="pos_emb", gpt2='`"learned"`', modern='`"rope"` (+ `rope_theta`)',
        summary="rotate q and k by their position: q·k depends only on the offset",
        doc="rope.md", title="Rotary position embeddings",
        variants=(Variant("rope", "+RoPE", lambda c: {"pos_emb": "rope"}),),
        describe=lambda c: f"RoPE (theta {c.rope_theta:g})" if c.pos_emb == "rope" else "learned positions",
        hf_gpt2=("gpt2",), hf_modern=("llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
    ),
    Switch(
        field="n_kv_head", gpt2="`= n_head`", modern="`< n_head` (`1` = MQA)",
        summary="query heads share K/V heads: the KV cache shrinks by `n_head / n_kv_head`",
        doc="gqa.md", title="Grouped- and multi-query attention",
        variants=(Variant("gqa", "+GQA", lambda c: {"n_kv_head": max(1, c.n_head // 2)}),
                  Variant("mqa", "+MQA", lambda c: {"n_kv_head": 1})),
        describe=_describe_heads,
        hf_gpt2=("gpt2", "llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
        hf_modern=("llama", "mistral", "qwen3", *MOE_FORMATS),
    ),
    Switch(
        field="window", gpt2="`None`", modern="an int",
        summary="each query sees the last `window` keys: O(T·w) work and a rolling KV cache",
        doc="sliding_window.md", title="Sliding-window attention",
        variants=(Variant("swa", "+SWA", lambda c: {"window": max(1, c.block_size // 4)}),),
        describe=lambda c: "full causal attention" if c.window is None else f"sliding window {c.window}",
        hf_gpt2=("gpt2", "llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
        hf_modern=("mistral", "qwen3", *MOE_FORMATS),  # Mistral: Llama with a window
    ),
    Switch(
        field="norm", gpt2='`"layernorm"`', modern='`"rmsnorm"`',
        summary="rescale by the root mean square: no mean subtraction, no bias",
        doc="rmsnorm.md", title="RMSNorm",
        variants=(Variant("rmsnorm", "+RMSNorm", lambda c: {"norm": "rmsnorm"}),),
        describe=lambda c: "RMSNorm" if c.norm == "rmsnorm" else "LayerNorm",
        hf_gpt2=("gpt2",), hf_modern=("llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
    ),
    Switch(
        field="mlp", gpt2='`"gelu"`', modern='`"swiglu"` (+ `mlp_hidden`)',
        summary="a gated MLP with three matrices at the parameter cost of GPT-2's two",
        doc="swiglu.md", title="SwiGLU",
        # At the baseline's MLP parameters, so the comparison is not about size.
        variants=(Variant("swiglu", "+SwiGLU",
                          lambda c: {"mlp": "swiglu", "mlp_hidden": equal_params_swiglu_hidden(c)}),),
        describe=lambda c: f"{'SwiGLU' if c.mlp == 'swiglu' else 'GELU'} MLP (hidden {c.mlp_hidden})",
        hf_gpt2=("gpt2",), hf_modern=("llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
    ),
    Switch(
        field="qk_norm", gpt2="`False`", modern="`True`",
        summary="RMSNorm over each head's q and k before RoPE: attention logits cannot grow without bound",
        doc="qk_norm.md", title="QK-norm",
        variants=(Variant("qk_norm", "+QK-norm", lambda c: {"qk_norm": True}),),
        describe=lambda c: "QK-norm" if c.qk_norm else None,
        hf_gpt2=("gpt2", "llama", "mistral", "mixtral", "deepseek_v3"),
        hf_modern=("qwen3", "qwen3_moe"),  # Qwen3 always has it
        in_modern=False,  # "modern" stays the Llama/Mistral set that the committed report measured
    ),
    Switch(
        field="layer_pattern", gpt2="`None`", modern='`"LG"`, `"LLLLLG"`, ... (+ `window`)',
        summary="local layers slide by `window`, global ones see everything: rolling caches on the local layers only",
        doc="local_global.md", title="Local/global layers",
        variants=(Variant("local_global", "+local/global",
                          lambda c: {"window": max(1, c.block_size // 4), "layer_pattern": "LG"}),),
        describe=lambda c: None if c.layer_pattern is None else f"layers {c.layer_pattern} (L local, G global)",
        hf_gpt2=("gpt2", "llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3"),
        hf_modern=("qwen3",),  # Qwen3's layer_types; Mistral has none
        in_modern=False, builds_on=("window",),
    ),
    Switch(
        field="n_expert", gpt2="`0`", modern="experts per layer (+ `expert_top_k`, `expert_hidden`)",
        summary="a router sends each token to its top-k of n_expert MLPs: more parameters, the same compute per token",
        doc="moe.md", title="Mixture of experts",
        # 8 experts of half the width, top-2: a token uses as many MLP weights as in the baseline (plus the router).
        variants=(Variant("moe", "+MoE", lambda c: {"n_expert": 8, "expert_top_k": 2,
                                                    "expert_hidden": max(1, c.mlp_hidden // 2)}),),
        describe=_describe_moe,
        hf_gpt2=("gpt2", "llama", "mistral", "qwen3", "deepseek_v3"), hf_modern=(*MOE_FORMATS, "deepseek_v3"),
        in_modern=False,
    ),
    Switch(
        field="kv_lora_rank", gpt2="`None`", modern="an int (+ `qk_rope_head_dim`, ...)",
        summary="keys and values come from one small cached latent per token: decoding reads only the latent",
        doc="mla.md", title="Multi-head latent attention (MLA)",
        variants=(Variant("mla", "+MLA", _mla_changes),),
        describe=_describe_mla,
        hf_gpt2=("gpt2", "llama", "mistral", "qwen3", *MOE_FORMATS),
        hf_modern=("deepseek_v3",),  # DeepSeek is always MLA
        in_modern=False,
    ),
)


def switch_variants(base: GPTConfig) -> dict[str, dict[str, Any]]:
    """Every variant of every switch as field changes to `base`, in the table's order: {"rope": {...}, ...}."""
    return {v.name: v.changes(base) for s in SWITCHES for v in s.variants}


def modern_changes(base: GPTConfig) -> dict[str, Any]:
    """The first variant of every switch that is part of "modern", together."""
    changes: dict[str, Any] = {}
    for s in SWITCHES:
        if s.in_modern:
            changes.update(s.variants[0].changes(base))
    return changes


SIZE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")  # what every format holds


def gpt2_reference(config: GPTConfig) -> GPTConfig:
    """GPT-2 at config's sizes: every other field at its default (GPT-2's value), derived ones recomputed."""
    return type(config)(**{name: getattr(config, name) for name in SIZE_FIELDS})
