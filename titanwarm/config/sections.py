"""The TOML schema: one dataclass per ``[section]``, one documented field per key.

Each field's docstring (the string literal under it) is the key's documentation; ``--print-config``
and the README's key reference are generated from the same place. Checks that involve several keys or
the world size live in ``config/validate.py``. Adding a section is one dataclass here and one line in
``JobConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from titanwarm.archwarm.config import DepthSchedule
from titanwarm.curvature.config import Curvature
from titanwarm.stabilizers.config import Stabilizers
from titanwarm.checkpoint.config import Checkpoint, Fault


@dataclass
class Job:
    description: str = "titanwarm run"
    """Free text shown in the first log line."""
    dump_folder: str = "./outputs"
    """Folder for metrics.jsonl, TensorBoard logs (tb/) and checkpoints."""
    seed: int = 0
    """Seed for parameter init, data order of random parts and every RNG in the run."""
    custom_import: str = ""
    """Python module imported before components are looked up, to register your own models,
    datasets, tokenizers, optimizers or LR schedules (e.g. "myfork.components")."""


@dataclass
class Model:
    name: str = "llama3"
    """Registered model name."""
    flavor: str = "debugmodel"
    """Size preset of the model (see titanwarm/models/llama3/args.py for the list)."""
    tokenizer_path: str = "tokenizer/titanwarm_8k.tiktoken"
    """Tokenizer file: tiktoken BPE ranks (Llama 3 tokenizer.model format) or a sentencepiece
    .model; the format is detected from the file. The model's vocabulary size follows it."""


@dataclass
class Optimizer:
    name: str = "AdamW"
    """Registered optimizer: "AdamW" or "Adam"."""
    lr: float = 8e-4
    """Peak learning rate (reached at the end of LR warmup)."""
    beta1: float = 0.9
    """Adam first-moment decay."""
    beta2: float = 0.95
    """Adam second-moment decay."""
    eps: float = 1e-8
    """Adam epsilon (added to sqrt(v_hat))."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices and embeddings only (never to norm weights)."""
    implementation: str = "auto"
    """Kernel: "auto" (fused on CUDA, foreach elsewhere), "fused", "foreach" or "for-loop"."""


@dataclass
class LRScheduler:
    warmup_steps: int = 200
    """Linear warmup from ~0 to the peak LR over this many steps."""
    decay_type: str = "cosine"
    """Shape after warmup: "constant", "linear", "cosine", "sqrt" or "wsd"
    (warmup-stable-decay: constant, then linear decay over the last decay_ratio of training)."""
    decay_ratio: float = 0.2
    """For "wsd": fraction of all steps spent in the final decay."""
    min_lr_ratio: float = 0.0
    """The LR decays to min_lr_ratio * peak LR at the last step."""


@dataclass
class Training:
    steps: int = 1000
    """Number of optimizer steps."""
    local_batch_size: int = 8
    """Sequences per data-parallel rank per micro-batch."""
    global_batch_size: int = -1
    """Sequences per optimizer step over all ranks; -1 means local_batch_size * data-parallel
    degree. A multiple of that product turns on gradient accumulation."""
    seq_len: int = 256
    """Tokens per sequence (the model sees seq_len inputs and predicts seq_len targets)."""
    dataset: str = "shakespeare_kjv"
    """Registered dataset: "shakespeare_kjv" (built in), "python_stdlib" (no download), "text",
    "jsonl" or "hf"."""
    dataset_path: list[str] = field(default_factory=list)
    """For "text"/"jsonl": files or glob patterns; for "hf": [name_or_path] or [name, subset]."""
    dataset_field: str = "text"
    """For "jsonl" and "hf": the field holding the text."""
    dataset_unit: str = "document"
    """For "text": one document per "document" (file) or per "line"."""
    val_fraction: float = 0.02
    """Fraction of documents held out for validation (every round(1/val_fraction)-th document)."""
    max_norm: float = 1.0
    """Gradient-norm clipping threshold over all parameters (0 disables clipping)."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu" or "cuda"."""
    mixed_precision_param: str = "auto"
    """Compute dtype of the forward/backward ("bfloat16", "float16", "float32"; FSDP2's
    param_dtype, or autocast on one device). "auto": bfloat16 on CUDA, float32 on CPU. An explicit
    value is honoured on every device (CPU/gloo runs bf16 FSDP2 too)."""
    mixed_precision_reduce: str = "float32"
    """Gradient reduction dtype under FSDP2 ("float32" or "bfloat16")."""
    deterministic: bool = False
    """Use deterministic kernels (torch.use_deterministic_algorithms); CPU runs are deterministic
    anyway."""


@dataclass
class Parallelism:
    data_parallel_shard_degree: int = -1
    """FSDP2 shard degree; -1 uses every rank not taken by the other degrees."""
    data_parallel_replicate_degree: int = 1
    """Replicas of the sharded model (HSDP when > 1 together with sharding)."""
    tensor_parallel_degree: int = 1
    """Tensor-parallel degree (DTensor Colwise/Rowwise plan with sequence-parallel norms)."""
    loss_parallel: bool = False
    """Keep the output projection's vocabulary sharded into the loss (needs tensor parallelism)."""
    fsdp_reshard_after_forward: str = "default"
    """"default" (reshard except for the root module), "always" or "never"."""


@dataclass
class ActivationCheckpoint:
    mode: str = "none"
    """"none", "full" (recompute whole blocks) or "selective"."""
    selective_every: int = 2
    """For "selective": checkpoint every N-th block."""


@dataclass
class Compile:
    enable: bool = False
    """torch.compile each transformer block (and the loss)."""
    backend: str = "inductor"
    """torch.compile backend."""


@dataclass
class Metrics:
    log_freq: int = 10
    """Log every N steps (the first and last steps are always logged)."""
    enable_tensorboard: bool = True
    """Write TensorBoard event files under <dump_folder>/tb."""
    console: bool = True
    """Print a metrics line per logged step on rank 0."""


@dataclass
class Validation:
    enable: bool = True
    """Evaluate the held-out split periodically (val_loss, val_ppl)."""
    freq: int = 100
    """Evaluate every N steps, and at the last step."""
    steps: int = 8
    """Batches of local_batch_size sequences per evaluation (per data-parallel rank)."""


@dataclass
class JobConfig:
    """The whole run configuration, one attribute per TOML section."""

    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    training: Training = field(default_factory=Training)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
    metrics: Metrics = field(default_factory=Metrics)
    validation: Validation = field(default_factory=Validation)
    depth_schedule: DepthSchedule = field(default_factory=DepthSchedule)
    curvature: Curvature = field(default_factory=Curvature)
    stabilizers: Stabilizers = field(default_factory=Stabilizers)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    fault: Fault = field(default_factory=Fault)
