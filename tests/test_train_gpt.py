"""train_gpt.py on CPU: the whole run end to end, and the properties each part claims."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import unicodedata

import pytest
import sentencepiece as spm
import torch

from conftest import (ROOT, final_line, make_documents, paths, randomized_model, reference_kernels, run_script, tiny_data,
                      tiny_hp)

import train_gpt as tg


# --- the whole script ------------------------------------------------------------------------------


def test_script_runs_end_to_end(tiny_run):
    cwd, result = tiny_run
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("final_model.int8.ptz", "final_model.pt", "logs/tiny.json", "logs/tiny.txt"):
        assert (cwd / name).is_file(), name
    roundtrip = final_line(result.stdout, "final_int8_zstd_roundtrip_exact")
    ttt = final_line(result.stdout, "legal_ttt_exact")
    assert math.isfinite(float(roundtrip["val_bpb"])) and math.isfinite(float(ttt["val_bpb"]))
    log = (cwd / "logs/tiny.txt").read_text()
    assert log.startswith((ROOT / "train_gpt.py").read_text()), "the log starts with the script's source"
    assert "legal_ttt_exact val_loss:" in log.splitlines()[-2] or "legal_ttt_exact" in log


def test_bytes_total_is_script_plus_artifact(tiny_run):
    cwd, result = tiny_run
    summary = json.loads((cwd / "logs/tiny.json").read_text())
    script, artifact = (ROOT / "train_gpt.py").stat().st_size, (cwd / "final_model.int8.ptz").stat().st_size
    assert summary["bytes_code"] == script and summary["bytes_model"] == artifact
    assert summary["bytes_total"] == script + artifact
    assert summary["over_limit"] is False
    ttt = final_line(result.stdout, "legal_ttt_exact")
    assert summary["val_bpb"] == pytest.approx(float(ttt["val_bpb"]), abs=1e-8)
    assert summary["steps"] == 12 and summary["world_size"] == 1 and summary["seed"] == 7
    assert summary["backends"] == {"scan": "reference", "attn": "reference"}
    # the exported average's score beside the last step's weights', which it is to beat
    exported = float(final_line(result.stdout, "final_prequant")["val_bpb"])
    last = float(final_line(result.stdout, "final_last_step_prequant")["val_bpb"])
    assert summary["prequant_val_bpb"] == pytest.approx(exported, abs=1e-4) and exported != last
    assert "swa: exporting the mean of 2 weights from step 10 on" in result.stdout
    assert summary["last_step_val_bpb"] == pytest.approx(last, abs=1e-4)
    # nothing compiled inside either clock (on CPU nothing compiles at all; on a GPU the warm-up
    # compiles every shape first)
    assert summary["train_compiles"] == 0 and summary["eval_compiles"] == 0
    assert final_line(result.stdout, "training done:")["compiled_in_clock"] == "0"
    assert final_line(result.stdout, "evaluation done:")["compiled_in_clock"] == "0"


def test_compiled_graphs_counts_each_graph_torch_compile_makes():
    """The log's compiled_in_clock is this count's rise: a shape not seen before is a new graph."""
    double = torch.compile(lambda x: x.sin() * 2, dynamic=False, backend="eager")
    before = tg.compiled_graphs()
    double(torch.randn(3))
    double(torch.randn(3))
    assert tg.compiled_graphs() == before + 1
    double(torch.randn(4))
    assert tg.compiled_graphs() == before + 2


def test_training_lowers_the_loss(tiny_run):
    _, result = tiny_run
    vals = [float(l.split("val_loss:")[1].split()[0]) for l in result.stdout.splitlines() if l.startswith("step:") and "val_loss" in l]
    assert vals[0] == pytest.approx(math.log(320), abs=1e-3)  # zero-initialised head: uniform prediction
    assert vals[-1] < vals[0] - 0.5


def test_eval_only_reproduces_the_run(tiny_run, dataset, tokenizer_path):
    """As a reviewer would: the settings from the run's log (records.py settings), then EVAL_ONLY=1."""
    cwd, result = tiny_run
    exports = subprocess.run([sys.executable, str(ROOT / "tools" / "records.py"), "settings", str(cwd / "logs/tiny.txt")],
                             capture_output=True, text=True, check=True).stdout
    settings = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    assert settings["NUM_LAYERS"] == "2" and settings["TTT_ENABLED"] == "1" and "RUN_ID" not in settings
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(settings, RUN_ID="rescore", EVAL_ONLY="1", ARTIFACT="final_model.int8.ptz")
    again = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    for prefix in ("final_int8_zstd_roundtrip_exact", "legal_ttt_exact"):
        assert final_line(again.stdout, prefix)["val_bpb"] == final_line(result.stdout, prefix)["val_bpb"]
    assert final_line(again.stdout, "artifact")["bytes_total"] == final_line(result.stdout, "artifact")["bytes_total"]
    rescored = json.loads((cwd / "logs/rescore.json").read_text())  # its own results: the run's are untouched
    assert rescored["val_bpb"] == pytest.approx(float(final_line(result.stdout, "legal_ttt_exact")["val_bpb"]), abs=1e-8)
    assert json.loads((cwd / "logs/tiny.json").read_text())["steps"] == 12


# --- model properties ------------------------------------------------------------------------------


def test_model_is_causal():
    model = randomized_model()
    torch.manual_seed(1)
    ids = torch.randint(0, 320, (2, 80))
    base = model.logits(ids, None)  # the reference attention needs no block mask
    for t in (0, 17, 40, 78):
        changed = ids.clone()
        changed[:, t + 1:] = torch.randint(0, 320, changed[:, t + 1:].shape)
        out = model.logits(changed, None)
        assert torch.equal(out[:, :t + 1], base[:, :t + 1]), f"logits up to {t} changed"
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:]), "later logits should depend on later tokens"


@pytest.mark.parametrize("t_len,window", [(50, 16), (64, 16), (10, 16)])
def test_attention_window_boundary(t_len, window):
    torch.manual_seed(0)
    q = torch.randn(1, t_len, 4, 8, dtype=torch.float64)
    k = torch.randn(1, t_len, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, t_len, 2, 8, dtype=torch.float64, requires_grad=True)
    t = t_len - 1
    tg.sliding_window_attention_reference(q, k, v, window)[0, t].sum().backward()
    seen = (k.grad.abs().sum(dim=(0, 2, 3)) + v.grad.abs().sum(dim=(0, 2, 3))) > 0
    first_seen = max(0, t - window + 1)
    assert seen[first_seen:t + 1].all(), "position t must see t-W+1 .. t"
    assert not seen[:first_seen].any(), "position t must not see t-W or earlier"


def test_attention_reference_matches_dense_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 45, 4, 8), torch.randn(2, 45, 2, 8), torch.randn(2, 45, 2, 8)
    pos = torch.arange(45)
    mask = (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < 16)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2), v.repeat_interleave(2, 2).transpose(1, 2),
        attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(tg.sliding_window_attention_reference(q, k, v, 16), dense)


def sequential_scan(u, delta, A, B, C, D, z, delta_bias):
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.size(0), u.size(1), A.size(1), dtype=u.dtype)
    ys = []
    for t in range(u.size(2)):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * torch.nn.functional.silu(z)


@pytest.mark.parametrize("length", [7, 50, 300])
def test_selective_scan_matches_sequential_recurrence(length):
    torch.manual_seed(length)
    b, d, n = 2, 6, 4
    inputs = dict(u=torch.randn(b, d, length), delta=torch.randn(b, d, length), A=-torch.rand(d, n) * 3,
                  B=torch.randn(b, n, length), C=torch.randn(b, n, length), D=torch.randn(d),
                  z=torch.randn(b, d, length), delta_bias=torch.randn(d))
    inputs = {k: v.double().requires_grad_() for k, v in inputs.items()}
    out_ref = tg.selective_scan_reference(**inputs)
    grads_ref = torch.autograd.grad(out_ref.sin().sum(), list(inputs.values()))
    out_seq = sequential_scan(**inputs)
    grads_seq = torch.autograd.grad(out_seq.sin().sum(), list(inputs.values()))
    torch.testing.assert_close(out_ref, out_seq, rtol=1e-10, atol=1e-10)
    for name, g_ref, g_seq in zip(inputs, grads_ref, grads_seq):
        torch.testing.assert_close(g_ref, g_seq, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


class StandInScanKernel:
    """selective_scan_cuda's fwd/bwd calling conventions, computed with the reference scan (CPU, float64)."""

    @staticmethod
    def fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        assert softplus and B.dim() == C.dim() == 4  # the op passes (b, 1, n, l) for one group
        gated = tg.selective_scan_reference(u, delta, A, B[:, 0], C[:, 0], D, z, delta_bias)
        states = torch.zeros(u.size(0), u.size(1), -(-u.size(2) // 2048), 2 * A.size(1), dtype=A.dtype)
        return [(gated / torch.nn.functional.silu(z)).contiguous(), states, gated.contiguous()]  # as the kernel lays out

    @staticmethod
    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, states, out, dz, softplus, recompute_out_z):
        inputs = (u, delta, A, B[:, 0], C[:, 0], D, z, delta_bias)
        _, vjp = torch.func.vjp(tg.selective_scan_reference, *inputs)  # an operator's body runs below autograd
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = vjp(dout)
        return [du, ddelta, dA, dB[:, None], dC[:, None], dD, ddelta_bias, dz]  # the kernel's order


def test_mamba_scan_operator_wiring(monkeypatch):
    """The custom operators around mamba-ssm pass inputs, saved tensors and gradients in the right order."""
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", StandInScanKernel)
    torch.manual_seed(0)
    b, d, n, length = 2, 6, 4, 40
    inputs = dict(u=torch.randn(b, d, length), delta=torch.randn(b, d, length), A=-torch.rand(d, n) * 3,
                  B=torch.randn(b, n, length), C=torch.randn(b, n, length), D=torch.randn(d),
                  z=torch.randn(b, d, length), delta_bias=torch.randn(d))
    inputs = {k: v.double().requires_grad_() for k, v in inputs.items()}
    out_op = tg.mamba_scan_forward(**inputs)[0]
    grads_op = torch.autograd.grad(out_op.sin().sum(), list(inputs.values()))
    out_ref = tg.selective_scan_reference(**inputs)
    grads_ref = torch.autograd.grad(out_ref.sin().sum(), list(inputs.values()))
    torch.testing.assert_close(out_op, out_ref)
    for name, g_op, g_ref in zip(inputs, grads_op, grads_ref):
        torch.testing.assert_close(g_op, g_ref, msg=f"gradient of {name}")
    torch.library.opcheck(tg.mamba_scan_forward, tuple(inputs.values()),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_model_traces_as_one_graph_with_the_scan_operator(monkeypatch):
    """torch.compile sees the whole forward as one graph: nothing in the model breaks it (the scan as on GPU)."""
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", StandInScanKernel)
    hp = tiny_hp()
    kernels = dataclasses.replace(reference_kernels(), scan=tg.selective_scan_mamba_ssm)
    model = tg.HymbaGPT(hp, kernels)
    ids = torch.randint(0, hp.vocab_size, (2, hp.train_seq_len))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(ids, ids)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]


class StandInFlashInterface:
    """flash_attn.cute.interface's _flash_attn_fwd/_bwd calling conventions, computed with the reference attention."""

    @staticmethod
    def attention(q, k, v, causal, window_size_left, window_size_right):
        assert causal and window_size_right == 0
        return tg.sliding_window_attention_reference(q, k, v, window_size_left + 1)  # the left size excludes the query

    @staticmethod
    def _flash_attn_fwd(q, k, v, causal, window_size_left, window_size_right, return_lse):
        out = StandInFlashInterface.attention(q, k, v, causal, window_size_left, window_size_right).contiguous()
        lse = torch.randn(q.size(0), q.size(2), q.size(1), dtype=torch.float32)  # (b, heads, t), as the kernel's
        StandInFlashInterface.saved = (out.detach().clone(), lse.clone())
        return out, lse, None, None, None

    @staticmethod
    def _flash_attn_bwd(q, k, v, out, dout, lse, causal, window_size_left, window_size_right):
        assert torch.equal(out, StandInFlashInterface.saved[0]) and torch.equal(lse, StandInFlashInterface.saved[1])
        _, vjp = torch.func.vjp(lambda *qkv: StandInFlashInterface.attention(*qkv, causal, window_size_left, window_size_right),
                                q, k, v)
        return vjp(dout)


def test_flash_attention_operator_wiring(monkeypatch):
    """The custom operators around FlashAttention-4 pass the window, saved tensors and gradients in the right order."""
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", StandInFlashInterface)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 50, heads, 8, dtype=torch.float64, requires_grad=True) for heads in (4, 2, 2))
    grad = torch.randn(2, 50, 4, 8, dtype=torch.float64)
    out_op = tg.sliding_window_attention_flash(q, k, v, 16)
    out_ref = tg.sliding_window_attention_reference(q, k, v, 16)
    torch.testing.assert_close(out_op, out_ref)
    for name, g_op, g_ref in zip("qkv", torch.autograd.grad(out_op, (q, k, v), grad), torch.autograd.grad(out_ref, (q, k, v), grad)):
        torch.testing.assert_close(g_op, g_ref, msg=f"gradient of {name}")
    torch.library.opcheck(tg.flash_attention_forward, (q, k, v, 16), test_utils=("test_schema", "test_faketensor"))


def test_channel_major_linear_is_the_token_major_product_transposed():
    """One matmul over all positions; the result is (b, out, l) with positions contiguous, as the scan reads them."""
    weight, tokens = torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    for x in (tokens.mT, tokens.mT.contiguous()):  # as the block gives it (a transpose), or already channel-major
        out = tg.channel_major_linear(weight, x)
        assert out.shape == (3, 6, 5) and out.stride(-1) == 1
        assert torch.allclose(out, (tokens @ weight.T).mT, rtol=1e-12, atol=1e-12)


def test_causal_conv_is_causal_depthwise():
    torch.manual_seed(0)
    x, w, bias = torch.randn(2, 3, 10, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    out = tg.causal_conv1d(x, w, bias)  # channel-major: (batch, channels, length)
    dense = torch.nn.functional.conv1d(x, w[:, None], bias, padding=3, groups=3)[..., :10]
    torch.testing.assert_close(out, torch.nn.functional.silu(dense), rtol=1e-12, atol=1e-12)
    t, c = 6, 1
    expected = sum(w[c, 3 - j] * x[1, c, t - j] for j in range(4)) + bias[c]
    assert out[1, c, t].item() == pytest.approx(torch.nn.functional.silu(expected).item(), rel=1e-12)
    x2 = x.clone()
    x2[..., 7:] += 1.0
    assert torch.equal(tg.causal_conv1d(x2, w, bias)[..., :7], out[..., :7])


# --- artifact ----------------------------------------------------------------------------------------


def test_quantization_grid_floor_own_scale_and_exact_compression():
    torch.manual_seed(0)
    state = {"blocks.0.mlp.fc.weight": torch.randn(256, 300) * 0.05,
             "tok_emb.weight": torch.randn(512, 200) * 3,
             "blocks.0.mixer_scale": torch.randn(64),
             "blocks.0.mixer.x_proj.weight": torch.randn(40, 64),
             "steps": torch.arange(5)}
    state["blocks.0.mlp.fc.weight"][3, 7] = 40.0  # one row above 1: it keeps a scale of its own
    blob, coarsen = tg.pack_artifact(state, bits=8, level=22)
    assert coarsen == {}
    import io, zstandard
    raw = zstandard.ZstdDecompressor().decompress(blob)
    packed = torch.load(io.BytesIO(raw))
    reference = io.BytesIO()
    torch.save(tg.quantize_state_dict(state, 8), reference)
    assert raw == reference.getvalue(), "compression must be lossless, byte for byte"
    restored = tg.unpack_artifact(blob)
    assert restored.keys() == state.keys()
    step = torch.tensor(1 / 127).half().float()  # the floor of every scale: the fixed grid of small rows
    for name in ("blocks.0.mlp.fc.weight", "tok_emb.weight"):
        w, r, q = state[name], restored[name], packed["quantized"][name]
        scale = packed["scales"][name].float()[:, None]
        assert q.dtype == torch.int8 and q.abs().max() <= 127
        assert ((w - r).abs() <= scale / 2 + 1e-6).all()  # no clipping: every row's max is on its grid
        expected = (w.abs().amax(dim=1, keepdim=True).clamp(min=1) / 127).half().float()
        assert torch.equal(scale, expected)
    fc, fc_scale = restored["blocks.0.mlp.fc.weight"], packed["scales"]["blocks.0.mlp.fc.weight"].float()
    small_rows = torch.arange(256) != 3
    assert (fc_scale[small_rows] == step).all() and fc_scale[3] == pytest.approx(40 / 127, rel=1e-3)
    assert torch.equal(fc[small_rows], torch.round(fc[small_rows] / step) * step), "small rows sit on multiples of 1/127"
    assert len(packed["quantized"]["blocks.0.mlp.fc.weight"][small_rows].unique()) < 64  # rms 0.05: a quarter of the 255 values
    assert packed["kept"]["blocks.0.mixer_scale"].dtype == torch.float32  # control tensor
    assert packed["kept"]["blocks.0.mixer.x_proj.weight"].dtype == torch.float16
    assert torch.equal(restored["steps"], state["steps"])


def test_compression_reports_progress_and_is_lossless():
    import io, zstandard
    packed = {"w": torch.randint(-20, 20, (3 * 2**21,), dtype=torch.int8, generator=torch.Generator().manual_seed(0))}
    said = []
    blob = tg.compress(packed, 3, said.append)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    assert zstandard.ZstdDecompressor().decompress(blob) == buffer.getvalue()  # one frame, its size in the header
    assert said == ["artifact: compressing, 0% done", "artifact: compressing, 67% done"]


def test_quantize_dequantize_quantize_is_stable():
    torch.manual_seed(1)
    w = torch.cat((torch.randn(64, 128) * 0.03, torch.randn(64, 128) * 4))
    q, scale = tg.quantize_tensor(w, 8)
    again_q, again_scale = tg.quantize_tensor(tg.dequantize_tensor(q, scale), 8)
    assert torch.equal(q, again_q) and torch.equal(scale, again_scale)


def test_qat_forward_sees_exactly_what_the_artifact_gives_back():
    model = tg.HymbaGPT(tiny_hp(model_dim=128, mlp_mult=8, vocab_size=1024, bigram_buckets=4096, bigram_hash_dim=32),
                        reference_kernels())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    grid_modules = {name: m for name, m in model.named_modules() if hasattr(m, "qat")}
    assert {"tok_emb", "bigram.table", "blocks.0.mlp.fc", "blocks.0.mlp.proj", "lm_head"} <= grid_modules.keys()
    assert all(torch.equal(tg.grid_weight(m), m.weight) for m in grid_modules.values()), "QAT off: the float weight"
    tg.set_qat(model, True)
    restored = tg.unpack_artifact(tg.pack_artifact(model.state_dict(), bits=8, level=3)[0])
    for name, module in grid_modules.items():
        seen = tg.grid_weight(module)
        assert torch.equal(seen, restored[name + ".weight"]), name
        assert not torch.equal(seen, module.weight)
    ids = torch.randint(0, 1024, (1, 32))
    model(ids, ids).backward()  # straight through: the float weights get the gradient of the grid weights
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in grid_modules.values())
    tg.set_qat(model, False)
    assert all(torch.equal(tg.grid_weight(m), m.weight) for m in grid_modules.values())


def test_a_tied_head_trains_on_the_grid_the_artifact_gives_back():
    """With TIE_EMBEDDINGS=1 the head is the token embedding: under QAT its logits come from the
    embedding as the artifact stores it, as the lookups do."""
    model = tg.HymbaGPT(tiny_hp(model_dim=128, vocab_size=1024, tie_embeddings=1), reference_kernels())
    assert model.lm_head is None and tg.is_quantized(model.tok_emb.weight)
    with torch.no_grad():
        model.tok_emb.weight.add_(torch.randn_like(model.tok_emb.weight) * 0.05)
    tg.set_qat(model, True)
    ids = torch.randint(0, 1024, (1, 32))
    qat_logits = model.logits(ids, None)
    restored = tg.unpack_artifact(tg.pack_artifact(model.state_dict(), bits=8, level=3)[0])
    tg.set_qat(model, False)
    model.load_state_dict(restored)
    torch.testing.assert_close(qat_logits, model.logits(ids, None), rtol=0, atol=0)


def test_a_run_with_a_tied_head(tmp_path, dataset, tokenizer_path):
    result = run_script(tmp_path, paths(dataset, tokenizer_path, TIE_EMBEDDINGS=1, TTT_ENABLED=0,
                                        QAT_START_FRAC=0.5))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lm_head" not in tg.unpack_artifact((tmp_path / "final_model.int8.ptz").read_bytes())
    assert math.isfinite(float(final_line(result.stdout, "final_int8_zstd_roundtrip_exact")["val_bpb"]))


def test_export_coarsens_the_largest_tensors_until_the_artifact_fits():
    torch.manual_seed(2)
    state = {"big": torch.randn(512, 512) * 0.3, "medium": torch.randn(300, 300) * 0.3, "small": torch.randn(100, 100)}
    default, none = tg.pack_artifact(state, bits=8, level=3)
    assert none == {}
    budget = int(len(default) * 0.8)
    blob, coarsen = tg.pack_artifact(state, bits=8, level=3, budget=budget)
    assert len(blob) <= budget and coarsen and "small" not in coarsen and coarsen.get("big", 1) >= coarsen.get("medium", 1)
    restored = tg.unpack_artifact(blob)
    for name, c in coarsen.items():  # a grid c times coarser: the error stays within half its step
        step = state[name].abs().amax(dim=1, keepdim=True).clamp(min=1) * c / 127
        assert ((restored[name] - state[name]).abs() <= step / 2 * 1.001).all()
    with pytest.raises(RuntimeError, match="cannot fit"):
        tg.pack_artifact(state, bits=8, level=3, budget=100)


def test_recipe_defaults_are_the_measured_ones():
    """docs/recipe.md: on proxytext at one pass the last step's weights beat every average, and no TTT setting
    gained; the init rows are pinned by test_init_and_optimizer_groups."""
    hp = tg.Hyperparameters()
    assert hp.swa_lr_below == 0.0 and hp.swa_every == 10
    assert hp.ttt_enabled is False
    assert (hp.ttt_lr, hp.ttt_epochs, hp.ttt_chunk_tokens) == (0.0001, 3, 65536)  # the least harmful measured


def test_init_and_optimizer_groups():
    torch.manual_seed(0)
    hp = tiny_hp(num_layers=4)
    model = tg.HymbaGPT(hp, reference_kernels())
    for block in model.blocks:
        assert torch.equal(block.mixer_scale, torch.ones_like(block.mixer_scale))
        assert torch.equal(block.mlp_scale, block.mixer_scale)
    q = model.blocks[1].mixer.q_proj.weight  # PyTorch's default: uniform within 1/sqrt(fan_in), not orthogonal
    assert q.abs().max() <= q.size(1) ** -0.5 and q.abs().max() > 0.9 * q.size(1) ** -0.5
    assert (q @ q.T - torch.eye(q.size(0))).abs().max() > 0.5
    for zero in (model.blocks[0].mixer.out_proj, model.blocks[0].mlp.proj, model.bigram.proj, model.lm_head):
        assert not zero.weight.any()
    # Mamba's step sizes: softplus(bias) log-uniform in [0.001, 0.1], spread over the range
    step = torch.nn.functional.softplus(model.blocks[0].mixer.dt_proj.bias)
    assert step.min() >= 0.001 * 0.999 and step.max() <= 0.1 * 1.001
    assert step.min() < 0.003 and step.max() > 0.03
    assert torch.sigmoid(model.smear.gate).max().item() == pytest.approx(0.1192, abs=1e-3)
    run = tg.Run(0, 1, torch.device("cpu"), None)
    adam, muon = tg.build_optimizers(hp, model, run)
    groups = {id(p): (type(opt).__name__, g["lr"]) for opt in (adam, muon) for g in opt.param_groups for p in g["params"]}
    assert len(groups) == len(list(model.parameters()))
    assert groups[id(model.tok_emb.weight)] == ("Adam", hp.embed_lr)
    assert groups[id(model.bigram.table.weight)] == ("Adam", hp.embed_lr)  # kept from before PR #599's recipe: measured
    assert groups[id(model.bigram.proj.weight)] == ("Muon", hp.matrix_lr)
    assert groups[id(model.lm_head.weight)] == ("Adam", hp.head_lr)
    mixer = model.blocks[0].mixer
    for p in (mixer.conv_weight, mixer.A_log, mixer.D, mixer.dt_proj.bias, model.smear.gate):
        assert groups[id(p)] == ("Adam", hp.scalar_lr)
    for p in (mixer.q_proj.weight, mixer.in_proj.weight, mixer.x_proj.weight, mixer.dt_proj.weight):
        assert groups[id(p)] == ("Muon", hp.matrix_lr)


# --- bits per byte -----------------------------------------------------------------------------------


def count_bytes(sp, docs):
    ids = [t for doc in docs for t in [1] + sp.encode(doc)]
    tables = tg.build_byte_tables(sp, sp.get_piece_size(), torch.device("cpu"))
    ids = torch.tensor(ids)
    return int(tables.target_bytes(ids[:-1], ids[1:]).sum()), ids


def test_byte_accounting_matches_utf8_length(tokenizer_path):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    docs = make_documents(20, seed=11) + ["Ünïcödé ✓ text: 3 × 4 = 12 — ok", "日本語"]
    counted, ids = count_bytes(sp, docs)
    assert sp.unk_id() not in ids.tolist()
    assert counted == sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)
    assert counted == sum(len(d.encode("utf-8")) for d in docs)


def test_byte_accounting_with_the_challenge_tokenizer():
    path = ROOT.parent / "shared" / "tokenizers" / "fineweb_1024_bpe.model"
    if not path.is_file():
        pytest.skip("../shared/tokenizers/fineweb_1024_bpe.model is not present")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    ascii_docs = [unicodedata.normalize("NFKD", d).encode("ascii", "ignore").decode() for d in make_documents(30, seed=5)]
    docs = ascii_docs + ["Prices rose 3.5% in 2024 \u2014 the cafe's  facade stayed."]
    assert any("\u2014" in d for d in docs)  # a multi-byte character the vocabulary has
    counted, ids = count_bytes(sp, docs)
    assert counted == sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)


def test_windows_score_every_target_once():
    for stride in (0, 5, 16):
        windows = tg.make_windows(1, 101, seq_len=16, stride=stride)
        scored = [s + 1 + j for s, n, f in windows for j in range(f, n)]
        assert scored == list(range(1, 101))
        assert all(0 <= s and n <= 16 and s + n <= 100 for s, n, f in windows)
    strided = tg.make_windows(1, 101, seq_len=16, stride=5)
    assert strided[-1][1] == 16, "strided windows use the longest context available"


# --- test-time training is score-first ------------------------------------------------------------


def test_ttt_never_scores_a_token_with_weights_trained_on_it(tokenizer_path, monkeypatch):
    hp = tiny_hp(TTT_CHUNK_TOKENS=128, TTT_EPOCHS=1, TRAIN_SEQ_LEN=64, EVAL_TIME_BUDGET=1e9)
    data = tiny_data(tokenizer_path)
    model = tg.HymbaGPT(hp, reference_kernels())
    run = tg.Run(0, 1, torch.device("cpu"), None)
    trained, events = set(), []

    def targets(windows):
        return {s + 1 + j for s, n, f in windows for j in range(f, n)}

    real_score, real_train = tg.score_windows, tg.ttt_train_chunk

    def recording_score(model_, tokens, windows, *args):
        events.append(("score", targets(windows)))
        assert not targets(windows) & trained, "scored a token the weights have trained on"
        return real_score(model_, tokens, windows, *args)

    def recording_train(model_, tokens, windows, *args):
        events.append(("train", targets(windows)))
        trained.update(targets(windows))
        return real_train(model_, tokens, windows, *args)

    monkeypatch.setattr(tg, "score_windows", recording_score)
    monkeypatch.setattr(tg, "ttt_train_chunk", recording_train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tg.evaluate_with_ttt(model, data, hp, run, eval_start=__import__("time").perf_counter())
    scored = [t for kind, ts in events if kind == "score" for t in ts]
    assert sorted(scored) == list(range(1, len(data.val_tokens))), "every target scored exactly once"
    assert [k for k, _ in events].count("train") == math.ceil(699 / 128) - 1, "trains on every chunk but the last"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "TTT changed the weights"


class RecordingModel(torch.nn.Module):
    """The model, noting what torch.compile guards on in every forward it runs: the shape, gradients on, train
    mode, the reduction, and whether the inputs are the targets."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.seen = model, set()

    def forward(self, ids, targets, reduction="mean"):
        self.seen.add((tuple(ids.shape), torch.is_grad_enabled(), self.inner.training, reduction, ids is targets))
        return self.inner(ids, targets, reduction)


@pytest.mark.parametrize("stride,ttt", [(0, True), (48, True), (0, False)])
def test_warm_up_runs_every_forward_the_evaluation_will_run(tokenizer_path, stride, ttt):
    """What torch.compile would compile during the evaluation: every shape and mode is run once in the warm-up."""
    hp = tiny_hp(TTT_CHUNK_TOKENS=200, TTT_EPOCHS=1, TRAIN_SEQ_LEN=64, EVAL_STRIDE=stride, EVAL_BATCH_SEQS=3,
                 TTT_BATCH_SEQS=2, TTT_ENABLED=int(ttt), EVAL_TIME_BUDGET=1e9)
    data, run = tiny_data(tokenizer_path), tg.Run(0, 1, torch.device("cpu"), None)
    model = RecordingModel(tg.HymbaGPT(hp, reference_kernels()))
    tg.compile_evaluation(model.inner, model, data, hp, run)
    warmed, model.seen = model.seen, set()
    assert model.inner.training and all(p.grad is None for p in model.parameters())
    tg.evaluate_bpb(model, data, hp, run)
    if ttt:
        tg.evaluate_with_ttt(model, data, hp, run, time.perf_counter())
    assert model.seen <= warmed, model.seen - warmed
    assert len({shape for shape, *_ in model.seen}) > 1  # the tail windows and batches differ


def test_ttt_freezes_the_first_blocks_of_a_compiled_model(tokenizer_path):
    """TTT_FREEZE_BLOCKS holds for the compiled wrapper too, whose parameter names all gain a prefix."""
    hp = tiny_hp(TTT_CHUNK_TOKENS=128, TTT_EPOCHS=1, TRAIN_SEQ_LEN=64, EVAL_TIME_BUDGET=1e9, TTT_FREEZE_BLOCKS=1)
    model = tg.HymbaGPT(hp, reference_kernels())
    before = {name: t.clone() for name, t in model.state_dict().items()}
    tg.evaluate_with_ttt(torch.compile(model, backend="eager"), tiny_data(tokenizer_path), hp,
                         tg.Run(0, 1, torch.device("cpu"), None), time.perf_counter())
    changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
    assert changed and not any(name.startswith("blocks.0.") for name in changed)
    assert any(name.startswith("blocks.1.") for name in changed)


def test_ttt_undoes_a_chunk_whose_gradient_overflows(tokenizer_path):
    """A non-finite gradient: that chunk's training is undone, the log says so, the rest is only scored (finite)."""
    hp = tiny_hp(TTT_CHUNK_TOKENS=128, TTT_EPOCHS=2, TRAIN_SEQ_LEN=64, EVAL_TIME_BUDGET=1e9)
    model, data, lines = tg.HymbaGPT(hp, reference_kernels()), tiny_data(tokenizer_path), []
    run = tg.Run(0, 1, torch.device("cpu"), None)
    run.log = lambda message, console=True: lines.append(message)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    model.blocks[1].mlp.fc.weight.register_hook(lambda grad: grad * float("nan"))
    loss, bpb = tg.evaluate_with_ttt(model, data, hp, run, time.perf_counter())
    assert sum("overflowed" in line for line in lines) == 1
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())
    assert bpb == pytest.approx(tg.evaluate_bpb(model, data, hp, run)[1], rel=1e-9)  # every chunk scored unadapted


def test_ttt_optimizer_is_pr599s_adamw_at_ttt_lr(tokenizer_path, monkeypatch):
    """TTT's AdamW: betas (0.9, 0.999) and weight decay 0.01 as PR #599, the learning rate TTT_LR."""
    made = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: made.append(kw) or adamw(params, **kw))
    hp = tiny_hp(TTT_CHUNK_TOKENS=128, TTT_EPOCHS=1, TRAIN_SEQ_LEN=64, EVAL_TIME_BUDGET=1e9)
    tg.evaluate_with_ttt(tg.HymbaGPT(hp, reference_kernels()), tiny_data(tokenizer_path), hp,
                         tg.Run(0, 1, torch.device("cpu"), None), time.perf_counter())
    assert made == [dict(lr=hp.ttt_lr, betas=(0.9, 0.999), weight_decay=0.01)]


def test_ttt_stops_adapting_when_the_budget_is_spent(tokenizer_path, monkeypatch):
    hp = tiny_hp(TTT_CHUNK_TOKENS=128, TTT_EPOCHS=1, TRAIN_SEQ_LEN=64, EVAL_TIME_BUDGET=0)
    model = tg.HymbaGPT(hp, reference_kernels())
    calls = []
    monkeypatch.setattr(tg, "ttt_train_chunk", lambda *a: calls.append(1))
    loss, bpb = tg.evaluate_with_ttt(model, tiny_data(tokenizer_path), hp, tg.Run(0, 1, torch.device("cpu"), None),
                                     eval_start=0.0)
    assert calls == [] and math.isfinite(bpb)


def test_ttt_sums_gradients_over_ranks_in_each_parameters_dtype():
    """On GPU the embedding tables are bf16 and the rest fp32 (build_model): the summed gradients go back to each
    parameter in its own dtype. Two H200s' TTT once stopped on this (a bf16 table given an fp32 gradient)."""
    run = tg.Run(0, 2, torch.device("cpu"), None)
    run.all_reduce = lambda tensor, op=None: tensor * 2  # both ranks hold the same gradients
    table, weight, unused = (torch.nn.Parameter(t) for t in (torch.ones(3, 2, dtype=torch.bfloat16), torch.ones(4), torch.ones(2)))
    table.grad, weight.grad = torch.full((3, 2), 0.75, dtype=torch.bfloat16), torch.arange(4.0)
    tg.sum_grads_over_ranks([table, weight, unused], run)
    assert (table.grad.dtype, weight.grad.dtype, unused.grad.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    assert table.grad.eq(1.5).all() and weight.grad.equal(torch.arange(0.0, 8.0, 2.0)) and unused.grad.eq(0).all()


# --- schedule and SWA ------------------------------------------------------------------------------


def test_lr_schedule_by_iterations():
    hp = tiny_hp(ITERATIONS=100, WARMDOWN_ITERS=40, MAX_WALLCLOCK_SECONDS=0)
    assert tg.lr_multiplier(0, 0, hp) == 1.0 and tg.lr_multiplier(60, 0, hp) == 1.0
    assert tg.lr_multiplier(80, 0, hp) == pytest.approx(0.5)  # halfway through a cosine warmdown
    assert tg.lr_multiplier(70, 0, hp) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.75)))
    assert tg.lr_multiplier(100, 0, hp) == 0.0
    linear = tiny_hp(ITERATIONS=100, WARMDOWN_ITERS=40, MAX_WALLCLOCK_SECONDS=0, WARMDOWN_SHAPE="linear")
    assert tg.lr_multiplier(90, 0, linear) == pytest.approx(0.25)


def test_lr_schedule_by_wallclock():
    hp = tiny_hp(ITERATIONS=20000, WARMDOWN_ITERS=1000, MAX_WALLCLOCK_SECONDS=100)
    # 100 ms per step: the warmdown lasts 100 s, the whole run: it starts at once, at 1.0
    assert tg.lr_multiplier(10, 1000.0, hp) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.99)))
    assert tg.lr_multiplier(500, 50_000.0, hp) == pytest.approx(0.5)
    assert tg.lr_multiplier(1000, 100_000.0, hp) == 0.0
    fast = tiny_hp(ITERATIONS=20000, WARMDOWN_ITERS=100, MAX_WALLCLOCK_SECONDS=100)  # 10 ms warmdown window: 1 s
    assert tg.lr_multiplier(5000, 50_000.0, fast) == 1.0
    assert tg.lr_multiplier(9950, 99_500.0, fast) == pytest.approx(0.5)


def test_qat_starts_at_the_step_after_it_is_due(tmp_path, dataset, tokenizer_path):
    """QAT is due after step 6 of 12: every rank reads the step's flags at once, so the weights train on the grid from step 7."""
    result = run_script(tmp_path, paths(dataset, tokenizer_path, QAT_START_FRAC=0.5, TTT_ENABLED=0, MAX_WALLCLOCK_SECONDS=0))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "qat: on from step 7," in result.stdout


def test_the_wallclock_stop_overruns_its_limit_by_less_than_a_step(tmp_path, dataset, tokenizer_path):
    """The time check looks a step ahead: the run ends within a step of the limit."""
    result = run_script(tmp_path, paths(dataset, tokenizer_path, ITERATIONS=100000, MAX_WALLCLOCK_SECONDS=3, SWA_EVERY=1000,
                                        VAL_LOSS_EVERY=0, TRAIN_LOG_EVERY=100000, TTT_ENABLED=0))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopping_early: wallclock_cap" in result.stdout
    done = final_line(result.stdout, "training done:")
    train_ms, step_ms = float(done["train_time"].removesuffix("ms")), float(done["step_avg"].removesuffix("ms"))
    assert train_ms <= 3000 + step_ms, (train_ms, step_ms)


def test_muon_momentum_warmup():
    hp = tiny_hp(MUON_MOMENTUM_WARMUP_STEPS=500)
    assert tg.muon_momentum(0, hp) == pytest.approx(0.85)
    assert tg.muon_momentum(250, hp) == pytest.approx(0.90)
    assert tg.muon_momentum(5000, hp) == pytest.approx(0.95)


def test_weight_average_is_the_mean_of_every_nth_step_below_the_learning_rate():
    model = torch.nn.Linear(2, 1, bias=False)
    average = tg.WeightAverage(lr_below=0.5, every=2)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    assert average.weights(model)["weight"][0, 0].item() == -1.0  # no sample: the model's own
    for step, multiplier in zip(range(1, 9), (1.0, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1)):
        with torch.no_grad():
            model.weight.fill_(float(step))
        average.update(model, step, multiplier)
    # steps 6 and 8 (even, below 0.5); step 4 ran at 0.5 exactly, so not below
    assert average.samples == 2 and average.first_step == 6
    model.load_state_dict(average.weights(model))
    assert model.weight[0, 0].item() == pytest.approx(7.0)


def test_muon_orthogonalizes():
    torch.manual_seed(0)
    g = torch.randn(64, 32)
    x = tg.newton_schulz_orthogonalize(g, steps=5).float()
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.5 and singular.max() < 1.5


def test_muon_step_matches_a_plain_per_matrix_update():
    torch.manual_seed(0)
    shapes = [(16, 8), (16, 8), (8, 24), (16, 8)]
    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    copies = [p.detach().clone() for p in params]
    opt = tg.Muon(params, lr=0.1, momentum=0.9, backend_steps=5, weight_decay=0.5)
    bufs = [torch.zeros_like(c) for c in copies]
    for _ in range(3):
        grads = [torch.randn_like(c) for c in copies]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (c, g) in enumerate(zip(copies, grads)):
            bufs[i] = 0.9 * bufs[i] + g
            update = tg.newton_schulz_orthogonalize(g + 0.9 * bufs[i], 5).float() * max(1.0, c.size(0) / c.size(1)) ** 0.5
            copies[i] = c * (1 - 0.1 * 0.5) - 0.1 * update
    for p, c in zip(params, copies):
        torch.testing.assert_close(p.detach(), c, atol=2e-2, rtol=0)  # batched bf16 matmuls may round differently


def test_hyperparameters_from_env():
    hp = tg.Hyperparameters.from_env({"NUM_LAYERS": "3", "TTT_ENABLED": "0", "MATRIX_LR": "0.1"})
    assert hp.num_layers == 3 and hp.ttt_enabled is False and hp.matrix_lr == 0.1
    assert tg.Hyperparameters().train_seq_len == 32768 and tg.Hyperparameters().sliding_window == 1024
    with pytest.raises(tg.ConfigError, match="NUM_LAYERS"):
        tg.Hyperparameters.from_env({"NUM_LAYERS": "eight"})


def test_records_tool_reads_the_real_log(tiny_run, tmp_path):
    cwd, result = tiny_run
    ttt = final_line(result.stdout, "legal_ttt_exact")
    table = subprocess.run([sys.executable, str(ROOT / "tools" / "records.py"), "table", str(cwd / "logs/tiny.txt")],
                           capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert ttt["val_bpb"][:8] in table.stdout and "7" in table.stdout  # the run's result and seed
    folder = tmp_path / "record"
    made = subprocess.run([sys.executable, str(ROOT / "tools" / "records.py"), "folder", str(cwd / "logs/tiny.txt"), "--out",
                           str(folder), "--script", str(ROOT / "train_gpt.py"), "--requirements",
                           str(ROOT / "requirements.txt"), "--name", "tiny", "--author", "ci", "--github-id", "ci",
                           "--blurb", "tiny CPU run", "--artifact", f"7={cwd / 'final_model.int8.ptz'}"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    summary = json.loads((folder / "submission.json").read_text())
    assert summary["val_bpb"] == pytest.approx(float(ttt["val_bpb"]), abs=1e-7)
    assert (folder / "train_gpt.py").read_bytes() == (ROOT / "train_gpt.py").read_bytes()
    assert (folder / "final_model_seed7.int8.ptz").read_bytes() == (cwd / "final_model.int8.ptz").read_bytes()


@pytest.mark.skipif(tg.nvcc_path() is None, reason="nvcc is not installed")
def test_fused_scan_source_compiles(tmp_path, monkeypatch):
    """The CUDA source as the script compiles it on a GPU machine (here for Hopper, sm_90), with both entry points."""
    monkeypatch.setattr(tg.tempfile, "tempdir", str(tmp_path))
    library = tg.fused_scan_library.__wrapped__((9, 0), tg.SCAN_THREADS)
    assert library.scan_forward and library.scan_backward
    assert [p.suffix for p in (tmp_path / "hymba_kernels").iterdir()] == [".so"]  # the source and build removed


def test_named_fused_scan_says_why_it_cannot_run():
    for settings, reason in ((dict(), "it needs a CUDA GPU"),
                             (dict(hymba_ssm_state=8), "it is written for HYMBA_SSM_STATE=4, not 8")):
        hp = tg.Hyperparameters(scan_backend="fused", **settings)
        with pytest.raises(tg.ConfigError, match=f"^SCAN_BACKEND=fused: {reason}$"):
            tg.select_kernels(hp, torch.device("cpu"))
    # 'auto' passes over it on CPU without trying it
    kernels = tg.select_kernels(tg.Hyperparameters(), torch.device("cpu"))
    assert kernels.names == {"scan": "reference", "attn": "reference"} and kernels.passed_over == []


@pytest.mark.parametrize("op, backend", [("scan", "mamba_ssm"), ("scan", "fused"), ("attn", "flash")])
def test_compiled_model_has_no_graph_break_at_a_kernel(op, backend):
    """torch.compile traces a kernel's glue into one graph with its neighbours; a break (the fused
    scan's once, at storage_offset) would run the glue eagerly at every layer. Traced on the meta
    device, where the operators' fake kernels stand in for the GPU's."""
    hp = tiny_hp()
    fn = next(fn for name, _, fn in tg.KERNEL_CHOICES[op] if name == backend)
    # the reference scan cannot trace on meta (its autocast needs a real device): the fused one
    kernels = dataclasses.replace(reference_kernels(), **{"scan": tg.selective_scan_fused, op: fn})
    with torch.device("meta"):
        model = tg.HymbaGPT(hp, kernels)
        x = torch.randint(0, hp.vocab_size, (2, hp.train_seq_len))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x, x)
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
