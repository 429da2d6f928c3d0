"""Model configuration, saved inside every checkpoint.

One dataclass covers every model kind (SASRec, ReaRec-ERL, ReaRec-PRL, PLR) so a checkpoint is
rebuilt from its JSON alone; fields a kind does not use are ignored by it. `validate()` raises
ValueError naming the bad field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MODEL_KINDS = ("sasrec", "rearec-erl", "rearec-prl", "plr")


@dataclass
class ModelConfig:
    kind: str = "sasrec"
    n_items: int = 0  # real items; the embedding table has n_items + 1 rows (row 0 = padding)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.2  # hidden, attention and embedding dropout
    max_len: int = 50  # position table size = longest context the encoder sees
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    temperature: float = 1.0  # logits / temperature in the training losses only
    # Reasoning models (ReaRec, PLR).
    n_steps: int = 2  # T: latent reasoning steps
    n_streams: int = 2  # M: PLR parallel streams
    use_gate: bool = True  # PLR MoRS gate; False = plain mean over streams
    # PLR dual-process scoring: inference scores h0 + z; False = z alone (the ablation; training
    # scores z alone either way, plr-method.md s.3.6).
    dual_process: bool = True
    # Std of PLR's trigger init; 0 = init_std. The step input h0 + tau_m + R[k] goes through the
    # input LayerNorm, so triggers far smaller than h0 (norm ~ sqrt(d)) start every stream at the
    # same point, where the GRR gradient that would push them apart vanishes.
    trigger_std: float = 0.0
    grr_weight: float = 0.1  # PLR global reasoning regulariser (lambda)
    rcl_weight: float = 1.0  # PLR reasoning contrastive learning (beta)
    rcl_temperature: float = 1.0
    # Prefixes per sequence on which the full-catalogue regularisers (PLR GRR, ReaRec-ERL KL) are
    # computed in all-prefix training; 0 = every prefix. Bounds their (prefixes, M*T, n_items) memory.
    reg_prefixes: int = 8
    kl_weight: float = 0.05  # ReaRec-ERL diversity weight
    pl_weight: float = 1.0  # ReaRec-PRL progressive CE weight
    temp_scale: float = 5.0  # ReaRec-PRL temperature annealing base (alpha)
    cl_weight: float = 1.0  # ReaRec-PRL contrastive weight
    noise_std: float = 0.01  # ReaRec-PRL noise on reasoning inputs (gamma)

    def validate(self) -> "ModelConfig":
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {MODEL_KINDS}")
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.kind != "sasrec" and self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1 for {self.kind}, got {self.n_steps}")
        if self.trigger_std < 0:
            raise ValueError(f"trigger_std must be >= 0, got {self.trigger_std}")
        if self.reg_prefixes < 0:
            raise ValueError(f"reg_prefixes must be >= 0, got {self.reg_prefixes}")
        if self.kind == "plr" and self.n_streams < 1:
            raise ValueError(f"n_streams must be >= 1 for plr, got {self.n_streams}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**data).validate()
