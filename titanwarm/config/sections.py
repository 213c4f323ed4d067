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
    init: str = "default"
    """Weight init: "default" (torchtitan's: N(0, 0.02) inner projections, depth-scaled output
    projections, see ``Transformer.init_plan``) or "fan_in" (every linear layer N(0, 1/sqrt(fan_in)),
    as in Wortsman et al. 2023; the embedding stays N(0, 1))."""


@dataclass
class Optimizer:
    name: str = "AdamW"
    """Registered optimizer: "AdamW", "Adam", "Muon" or "NuMuon". Muon/NuMuon update the hidden
    2-D matrices and AdamW (lr, betas, eps, weight_decay below) everything else (docs/muon.md)."""
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
    adamw_modules: list[str] = field(default_factory=lambda: ["tok_embeddings", "output"])
    """Muon/NuMuon: parameters whose dotted name has one of these components stay on AdamW (the
    embedding and the output head, chosen by name, not by shape). Other 2-D parameters are the
    matrices; 1-D ones (norms, biases) always use AdamW without decay."""
    momentum: float = 0.95
    """Muon/NuMuon: momentum mu of the matrices (buffer <- lerp(buffer, grad, 1 - mu))."""
    nesterov: bool = True
    """Muon/NuMuon: orthogonalise lerp(grad, buffer, mu) (Nesterov) instead of the buffer."""
    ns_steps: int = 5
    """Muon: Newton-Schulz iterations (1..99)."""
    ns_coefficients: list[float] = field(default_factory=lambda: [3.4445, -4.775, 2.0315])
    """Muon: the quintic's (a, b, c): X <- a X + (b A + c A^2) X with A = X X^T."""
    ns_eps: float = 1e-7
    """Muon: floor of the Frobenius norm the input is divided by."""
    update_scale: str = "match_rms_adamw"
    """Muon/NuMuon: LR multiplier per m x n matrix: "match_rms_adamw" 0.2*sqrt(max(m, n))
    (update RMS like AdamW's, so lr and weight_decay carry over), "original" sqrt(max(1, m/n))
    or "none"."""
    rank_fraction: float = 0.25
    """NuMuon: r at the start; the update keeps the top k = ceil(r * min(m, n)) singular
    directions of each matrix's momentum with unit singular values (r = 1: Muon)."""
    rank_fraction_final: float = -1.0
    """NuMuon: r at the last step (-1: same as rank_fraction, no decay)."""
    rank_schedule: str = "constant"
    """NuMuon: "constant", "linear" or "cosine" from rank_fraction to rank_fraction_final."""
    rank_hold_fraction: float = 0.0
    """NuMuon: fraction of training.steps r stays at rank_fraction before it decays."""
    krylov_oversample: int = 8
    """NuMuon: the Krylov block has k + krylov_oversample columns."""
    krylov_iters: int = 2
    """NuMuon: Krylov blocks added after the first (each one multiplication by A A^T)."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """Load-time checks of the Muon/NuMuon keys."""
        from titanwarm.optim.muon_config import problems

        return problems(self)


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
    """Registered dataset: "tokens" (pre-tokenised folders, see docs/data.md), "shakespeare_kjv"
    (built in), "python_stdlib" (no download), "text", "jsonl" or "hf". The two built-in corpora are
    pre-tokenised into the cache on first use and read like "tokens"."""
    dataset_path: list[str] = field(default_factory=list)
    """For "tokens": token folders (written by python -m titanwarm.data.pretokenize) or folders of
    .npy/.bin token shards; several make a mixture. For "text"/"jsonl": files or glob patterns; for
    "hf": [name_or_path] or [name, subset]."""
    dataset_weights: list[float] = field(default_factory=list)
    """For "tokens" mixtures: one weight per dataset_path entry (share of the windows drawn from it);
    empty means proportional to each entry's token count."""
    dataset_max_repeat: float = 0.0
    """For "tokens": refuse to start when a run of training.steps would read any source more than this
    many times over (0: no limit)."""
    shuffle: bool = False
    """Shuffle the training data with shuffle_seed: "tokens" and the built-in corpora draw their
    seq_len + 1 token windows in a new seeded order every epoch; "text"/"jsonl"/"hf" shuffle the
    document order every epoch (holding the split's documents in memory). Off: the stream in file
    order, as before."""
    shuffle_seed: int = 0
    """Seed of the data order when shuffle is on (independent of job.seed, so the data order and the
    initialisation can be varied separately)."""
    prefetch: int = 2
    """Training batches prepared ahead on a background thread (pinned on CUDA); 0 reads each batch on
    the training thread."""
    dataset_field: str = "text"
    """For "jsonl" and "hf": the field holding the text."""
    dataset_unit: str = "document"
    """For "text": one document per "document" (file) or per "line"."""
    fixed_batch: bool = False
    """Full-batch training: every optimizer step trains on the same first global batch of the
    train split (no data noise; for edge-of-stability studies). Resuming keeps the same batch."""
    val_fraction: float = 0.02
    """Fraction of documents held out for validation (every round(1/val_fraction)-th document). For
    "tokens", the held-out split chosen at pretokenize time is used instead; foreign .npy/.bin shards
    hold out the last val_fraction of their tokens."""
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
    report: bool = True
    """At the end of the run, write <dump_folder>/summary.json and report.png (loss, LR, depth,
    curvature, skips, tokens/s; needs matplotlib, else only the summary) and print the summary on
    rank 0. The same on demand: python -m titanwarm.report DUMP_FOLDER [...]."""


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
