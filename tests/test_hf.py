"""Hugging Face interop against HF's own ``LlamaForCausalLM`` (transformers, CPU, float32, tiny
configs built here, no downloads): export -> HF logits, HF model -> import -> our logits, export ->
import bit-exact, and the same exported tensors from a 1-process and a 2-process FSDP2 / TP run.

Tolerance of the logits comparisons: max |difference| <= 1e-5 on logits up to ~10 (float32; the two
models order their matmuls, RoPE and softmax differently; measured 2e-7 to 5e-7). Leaving out the rope scaling
moves them by > 20x that (asserted, so the tolerance is known to be discriminating).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.launch import REPO, torchrun
from titanwarm.config import load_config
from titanwarm.hf.convert import check_hf_config, from_hf_tensor, hf_config, to_hf_tensor
from titanwarm.hf.export import export_checkpoint, plan_shards
from titanwarm.models.llama3 import FLAVORS, ModelArgs, RopeScaling
from titanwarm.trainer import Trainer

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

TOL = 1e-5
SEQ = 24
# Shapes: GQA (4 query heads share 2 KV heads); Llama 3.2 rope scaling with a short original
# context so that the scaling changes the angles at these positions; tied embeddings.
CASES = {
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, rope_theta=10000.0),
    "rope_scaling_tied": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, multiple_of=32,
                                   rope_theta=10000.0, tie_embeddings=True, norm_eps=1e-6,
                                   rope_scaling=RopeScaling(enabled=True, scale_factor=32.0,
                                                            original_max_position_embeddings=16)),
}


@pytest.fixture(params=list(CASES))
def flavor(request, monkeypatch) -> str:
    name = f"hf_{request.param}"
    monkeypatch.setitem(FLAVORS, name, CASES[request.param])
    return name


def trainer(tmp_path, flavor: str, *extra: str) -> Trainer:
    cfg, _ = load_config(["--model.flavor", flavor, "--training.seq_len", str(SEQ), "--training.device", "cpu",
                          "--training.steps", "1", "--job.dump_folder", str(tmp_path),
                          "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
                          "--metrics.report", "false", *extra])
    return Trainer(cfg)


def randomize_norms(t: Trainer) -> None:
    """Norm weights start at 1: make them differ so that a misplaced norm shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(0))


def our_logits(t: Trainer, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return t.model(ids).float()


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits.float()


def export_run(t: Trainer, out) -> None:
    t.checkpoint.export_model()
    export_checkpoint(t.checkpoint.folder / "model_only", out)


def test_rope_row_permutation_is_inverted_exactly():
    args = CASES["gqa"]
    w = torch.randn(args.kv_heads * args.head_dim, args.dim)
    name = "layers.0.attention.wk.weight"
    hf = to_hf_tensor(name, w, args)
    assert not torch.equal(hf, w) and torch.equal(from_hf_tensor(name, hf, args), w)
    # HF row j of a head is Meta row 2j, HF row j + head_dim/2 is Meta row 2j + 1
    d = args.head_dim
    assert torch.equal(hf[1], w[2]) and torch.equal(hf[d // 2 + 1], w[3]) and torch.equal(hf[d], w[d])


def test_export_then_llama_for_causal_lm_gives_the_same_logits(tmp_path, flavor):
    t = trainer(tmp_path / "run", flavor)
    randomize_norms(t)
    export_run(t, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    args = t.model_args
    assert config["num_key_value_heads"] == args.kv_heads and config["tie_word_embeddings"] == args.tie_embeddings
    assert not check_hf_config(config, args)
    ids = tokens(args.vocab_size)
    ours, theirs = our_logits(t, ids), hf_logits(tmp_path / "hf", ids)
    assert (ours - theirs).abs().max().item() <= TOL
    if args.rope_scaling.enabled:  # the scaling matters at these positions: without it, no match
        config["rope_scaling"] = None
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
        assert (our_logits(t, ids) - hf_logits(tmp_path / "hf", ids)).abs().max().item() > 20 * TOL


def hf_model_for(args: ModelArgs, seed: int = 0):
    config = transformers.LlamaConfig(**{k: v for k, v in hf_config(args, torch.float32).items()
                                         if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():  # HF initialises norms to 1: make them differ
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape))
    return model.eval()


def test_import_an_hf_model_gives_its_logits(tmp_path, flavor):
    probe = trainer(tmp_path / "probe", flavor)  # the run's model args (vocab from the tokenizer)
    hf = hf_model_for(probe.model_args)
    hf.save_pretrained(str(tmp_path / "hf"))
    t = trainer(tmp_path / "run", flavor, "--checkpoint.initial_load_path", str(tmp_path / "hf"))
    t.checkpoint.maybe_load()
    ids = tokens(probe.model_args.vocab_size)
    with torch.no_grad():
        theirs = hf(ids).logits
    assert (our_logits(t, ids) - theirs).abs().max().item() <= TOL


def test_export_then_import_is_bit_exact(tmp_path, flavor):
    a = trainer(tmp_path / "a", flavor)
    randomize_norms(a)
    export_run(a, tmp_path / "hf")
    b = trainer(tmp_path / "b", flavor, "--checkpoint.initial_load_path", str(tmp_path / "hf"),
                "--job.seed", "7")
    b.checkpoint.maybe_load()
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_sharded_export_writes_the_standard_index_and_tokenizer_files(tmp_path):
    t = trainer(tmp_path / "run", "tinymodel")
    t.checkpoint.export_model()
    files = export_checkpoint(t.checkpoint.folder / "model_only", tmp_path / "hf", max_shard_size="200KB",
                              dtype="bfloat16", tokenizer=t.cfg.model.tokenizer_path)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(f.name for f in files if f.name.startswith("model-"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"].values()) == set(shards)
    tensors = {k: v for s in shards for k, v in load_file(str(tmp_path / "hf" / s)).items()}
    assert set(tensors) == set(index["weight_map"]) and all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in tensors.values())
    assert plan_shards({"a": 5, "b": 5, "c": 20, "d": 1}, 10) == [["a", "b"], ["c"], ["d"]]
    # tokenizer files: AutoTokenizer encodes as the run's tokenizer does (with <|begin_of_text|>)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (t.tokenizer.bos_id, t.tokenizer.eos_id)
    assert config["max_position_embeddings"] == FLAVORS["tinymodel"].max_seq_len
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "In the beginning God created the heaven and the earth.\n\n  Thou art 123456 ünïcode\t!"
    assert hf_tok(text)["input_ids"] == t.tokenizer.encode(text, bos=True)
    assert (tmp_path / "hf" / "original" / "tokenizer.model").is_file()


def test_mismatched_hf_folder_is_one_clear_config_error(tmp_path):
    args = dataclasses.replace(FLAVORS["tinymodel"], n_layers=3)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config(args, torch.float32)))
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    from titanwarm.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(["--model.flavor", "tinymodel", "--checkpoint.initial_load_path", str(tmp_path / "hf")])
    assert info.value.key == "checkpoint.initial_load_path"
    assert "num_hidden_layers 3 vs n_layers 2" in info.value.why


def test_export_cli_refuses_a_non_checkpoint(tmp_path):
    from titanwarm.hf.export import main

    assert main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "out")]) == 2


WORKER = REPO / "tests" / "workers" / "hf_layout.py"


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["--parallelism.data_parallel_shard_degree", "2"],
                                    ["--parallelism.tensor_parallel_degree", "2"]], ids=["fsdp2", "tp"])
def test_two_process_layouts_import_and_export_the_same_tensors(tmp_path, layout):
    # 1 process: an initialised tinymodel, exported. 2 processes: load that HF folder into the
    # layout, save a DCP model-only export (sharded across both ranks), export it: bit-equal.
    one = trainer(tmp_path / "one", "tinymodel")
    randomize_norms(one)
    export_run(one, tmp_path / "hf_one")
    common = ["--model.flavor", "tinymodel", "--training.seq_len", str(SEQ), "--training.device", "cpu",
              "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
              "--job.dump_folder", str(tmp_path / "two"), "--checkpoint.initial_load_path",
              str(tmp_path / "hf_one"), "--job.seed", "5"]
    torchrun(2, [str(WORKER), *common, *layout])
    export_checkpoint(tmp_path / "two" / "checkpoint" / "model_only", tmp_path / "hf_two")
    a, b = load_file(str(tmp_path / "hf_one" / "model.safetensors")), load_file(str(tmp_path / "hf_two" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# config.json of the published Llama 3.2 1B and Llama 3.1 8B (the keys that define the weights)
PUBLISHED = {
    "1B": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05,
           "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "8B": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
           "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
           "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
}


@pytest.mark.parametrize("flavor_name", list(PUBLISHED))
def test_flavors_fit_the_published_llama_configs(flavor_name):
    args = FLAVORS[flavor_name]
    assert not check_hf_config(PUBLISHED[flavor_name], args)
    ours = hf_config(args, torch.bfloat16)  # and the export writes those very values
    assert {k: ours[k] for k in PUBLISHED[flavor_name]} == PUBLISHED[flavor_name]
    assert check_hf_config({**PUBLISHED[flavor_name], "num_key_value_heads": 4}, args) == [
        "num_key_value_heads 4 vs n_kv_heads 8"]
