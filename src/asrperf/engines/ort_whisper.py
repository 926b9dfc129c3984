"""Whisper on ONNX Runtime: two exported graphs driven by transformers' own `generate`.

Graphs (written once by `export_whisper`, fp32, from the transformers model the engine built):
  encoder.onnx  input_features (B, mels, 3000) -> last_hidden_state (B, 1500, d) and, for every
                decoder layer i, cross_k.i / cross_v.i (B, heads, 1500, d/heads): the cross-attention
                keys and values are computed once per 30 s window, as transformers' cache does.
  decoder.onnx  input_ids (B, n), past_k.i / past_v.i (B, heads, P, d/heads), cross_k.i / cross_v.i
                -> logits (B, n, vocab), present_k.i / present_v.i (B, heads, P + n, d/heads).
                One call per generated token (n = 1) after the prompt (n = prompt length, P = 0):
                decoding is O(n) in the tokens, as with transformers' KV cache.

Decoding is not re-implemented: `OrtWhisper` (built by `ort_whisper_model`) is a
`WhisperForConditionalGeneration` whose encoder and forward run these sessions, so the
transformers engine's own calls (`generate` with its prompt, suppress tokens, timestamp rules and
sequential long-form windows) run unchanged on top of ONNX Runtime. Only greedy decoding is
supported (what asrperf runs): beam search, which reorders the KV cache, raises.

torch, transformers and onnxruntime are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.errors import ModelError

OPSET = 17
EXPORTER_VERSION = 1  # bump when the graphs below change, so cached exports are redone
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
EXPORT_METHOD = (f"torch.onnx.export (TorchScript exporter, dynamo=False), opset {OPSET}: encoder with "
                 "cross-attention K/V, decoder step with past self-attention K/V; "
                 "driven by transformers' WhisperGenerationMixin.generate")


def _names(n_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kv}.{i}" for i in range(n_layers) for kv in ("k", "v")]


def _split_heads(x: Any, heads: int) -> Any:
    """(B, T, d) -> (B, heads, T, d / heads)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _graph_modules(model: Any) -> tuple[Any, Any]:
    """torch modules computing exactly what the two graphs compute, from `model`'s own layers."""
    import torch

    encoder, decoder = model.model.encoder, model.model.decoder
    heads = model.config.decoder_attention_heads

    class EncoderWithCrossKV(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.layers = encoder, decoder.layers

        def forward(self, input_features: Any) -> tuple[Any, ...]:
            h = self.encoder(input_features).last_hidden_state
            kv = []
            for layer in self.layers:
                kv += [_split_heads(layer.encoder_attn.k_proj(h), heads),
                       _split_heads(layer.encoder_attn.v_proj(h), heads)]
            return (h, *kv)

    class DecoderStep(torch.nn.Module):
        """WhisperDecoder's pre-norm layers written out with explicit past K/V (eager attention, as transformers)."""

        def __init__(self) -> None:
            super().__init__()
            self.decoder, self.proj_out = decoder, model.proj_out

        @staticmethod
        def _attend(q: Any, k: Any, v: Any, mask: Any | None) -> Any:
            w = torch.matmul(q, k.transpose(2, 3))  # q is pre-scaled, as in WhisperAttention
            if mask is not None:
                w = w + mask
            out = torch.matmul(torch.softmax(w.float(), dim=-1).to(q.dtype), v)
            b, h, t, dh = out.shape
            return out.transpose(1, 2).reshape(b, t, h * dh)

        def forward(self, input_ids: Any, *kv: Any) -> tuple[Any, ...]:
            n_layers = len(self.decoder.layers)
            past, cross = kv[: 2 * n_layers], kv[2 * n_layers:]
            n, p = input_ids.shape[1], past[0].shape[2]
            dec = self.decoder
            # (transformers defines WhisperDecoder.embed_scale but does not apply it; neither do we)
            h = dec.embed_tokens(input_ids) + dec.embed_positions.weight[p: p + n]
            # causal over past + new tokens: query at position p + i sees keys 0 .. p + i
            key_pos = torch.arange(p + n, device=h.device)
            query_pos = torch.arange(n, device=h.device) + p
            mask = torch.where(key_pos[None, :] <= query_pos[:, None], 0.0, torch.finfo(h.dtype).min).to(h.dtype)
            presents = []
            for i, layer in enumerate(dec.layers):
                sa, ca = layer.self_attn, layer.encoder_attn
                x = layer.self_attn_layer_norm(h)
                q = _split_heads(sa.q_proj(x) * sa.scaling, heads)
                k = torch.cat([past[2 * i], _split_heads(sa.k_proj(x), heads)], dim=2)
                v = torch.cat([past[2 * i + 1], _split_heads(sa.v_proj(x), heads)], dim=2)
                presents += [k, v]
                h = h + sa.out_proj(self._attend(q, k, v, mask))
                x = layer.encoder_attn_layer_norm(h)
                q = _split_heads(ca.q_proj(x) * ca.scaling, heads)
                h = h + ca.out_proj(self._attend(q, cross[2 * i], cross[2 * i + 1], None))
                x = layer.final_layer_norm(h)
                h = h + layer.fc2(layer.activation_fn(layer.fc1(x)))
            return (self.proj_out(dec.layer_norm(h)), *presents)

    return EncoderWithCrossKV().eval(), DecoderStep().eval()


def export_whisper(model: Any, feature_size: int, staging: Path) -> None:
    """Write encoder.onnx and decoder.onnx for transformers `model` (fp32) into `staging`."""
    import torch

    cfg = model.config
    n_layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    frames = 2 * cfg.max_source_positions  # the encoder's conv2 has stride 2: 3000 mel frames -> 1500
    encoder, decoder = _graph_modules(model)
    cross_names, past_names = _names(n_layers, "cross"), _names(n_layers, "past")
    present_names = _names(n_layers, "present")
    features = torch.zeros(2, feature_size, frames)
    # the tracer warns about Python branches on shapes; the checks against transformers cover them
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cross = encoder(features)[1:]
        torch.onnx.export(
            encoder, (features,), str(staging / ENCODER_FILE), input_names=["input_features"],
            output_names=["last_hidden_state", *cross_names],
            dynamic_axes={"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"},
                          **{name: {0: "batch"} for name in cross_names}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
        # traced with 3 past and 2 new tokens, so neither length is mistaken for a constant
        ids = torch.zeros(2, 2, dtype=torch.long)
        past = [torch.zeros(2, heads, 3, head_dim) for _ in past_names]
        torch.onnx.export(
            decoder, (ids, *past, *cross), str(staging / DECODER_FILE),
            input_names=["input_ids", *past_names, *cross_names], output_names=["logits", *present_names],
            dynamic_axes={"input_ids": {0: "batch", 1: "new"}, "logits": {0: "batch", 1: "new"},
                          **{name: {0: "batch", 2: "past"} for name in past_names},
                          **{name: {0: "batch", 2: "past_and_new"} for name in present_names},
                          **{name: {0: "batch"} for name in cross_names}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


class _Runner:
    """The two sessions and one sequence's decoder state.

    Inputs come from the host; the cross-attention and self-attention K/V stay where the session
    put them (the GPU under CUDA), bound through IOBinding; only logits and the encoder output,
    which generate reads, come back to the host.
    """

    def __init__(self, encoder: Any, decoder: Any, n_layers: int, heads: int, head_dim: int, device: str) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.encoder, self.decoder = encoder, decoder
        self.heads, self.head_dim = heads, head_dim
        kind, _, index = device.partition(":")
        self.kind, self.index = kind, int(index or 0)
        self.cross_names, self.past_names = _names(n_layers, "cross"), _names(n_layers, "past")
        self.present_names = _names(n_layers, "present")
        self._sequence: object | None = None  # the generate() cache object the state below belongs to
        self._past: list[Any] = []

    def encode(self, features: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("input_features", np.ascontiguousarray(features, np.float32))
        binding.bind_output("last_hidden_state", "cpu")
        for name in self.cross_names:
            binding.bind_output(name, self.kind, self.index)
        self.encoder.run_with_iobinding(binding)
        out = binding.get_outputs()
        return out[0].numpy(), out[1:]

    def step(self, sequence: object, ids: np.ndarray, cross: list[Any]) -> np.ndarray:
        """Logits for `ids` (B, n) following the tokens already fed for `sequence`; keeps their K/V."""
        if sequence is not self._sequence:  # a new generate() call: start from an empty past
            shape = [ids.shape[0], self.heads, 0, self.head_dim]
            self._past = [self.ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.kind, self.index)
                          for _ in self.past_names]
            self._sequence = sequence
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64))
        for name, value in zip(self.past_names + self.cross_names, self._past + list(cross)):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.kind, self.index)
        self.decoder.run_with_iobinding(binding)
        out = binding.get_outputs()
        self._past = out[1:]
        return out[0].numpy()


def ort_whisper_model(torch_model: Any, encoder_session: Any, decoder_session: Any, device: str) -> Any:
    """A WhisperForConditionalGeneration whose encoder and decoder run the two ONNX Runtime sessions.

    It keeps `torch_model`'s config, generation config and two encoder convolutions (see OrtEncoder);
    every other torch weight is dropped with `torch_model`.
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperPreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

    cfg = torch_model.config
    heads = cfg.decoder_attention_heads
    # the KV cache argument is `cache` in recent transformers 5 releases, `past_key_values` before
    cache_name = "cache" if "cache" in {f.name for f in fields(Seq2SeqLMOutput)} else "past_key_values"
    runner = _Runner(encoder_session, decoder_session, cfg.decoder_layers, heads, cfg.d_model // heads, device)

    @dataclass
    class OrtEncoderOutput(BaseModelOutput):
        """The encoder output generate passes to every decoder step, plus the ORT cross-attention K/V."""

        cross_kv: list[Any] | None = None

    class OrtEncoder(torch.nn.Module):
        """Runs the encoder session. Keeps the torch encoder's two convolutions, unused, because
        generate reads their strides to find the mel frames per encoder position."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = torch_model.model.encoder.conv1, torch_model.model.encoder.conv2

        def forward(self, input_features: Any, **_: Any) -> Any:
            with torch.profiler.record_function("asrperf::encoder"):
                hidden, cross = runner.encode(input_features.detach().cpu().numpy())
            return OrtEncoderOutput(last_hidden_state=torch.from_numpy(hidden), cross_kv=cross)

    class OrtWhisper(WhisperForConditionalGeneration):
        def __init__(self) -> None:
            WhisperPreTrainedModel.__init__(self, cfg)  # not WhisperForConditionalGeneration's: no torch layers
            self.model = torch.nn.Module()
            self.model.encoder = OrtEncoder()
            self.generation_config = torch_model.generation_config
            self.max_target_positions = cfg.max_target_positions

        def get_encoder(self, *_: Any, **__: Any) -> Any:
            return self.model.encoder

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            config = kwargs.get("generation_config") or self.generation_config
            if (kwargs.get("num_beams") or config.num_beams or 1) > 1:  # beams reorder the cache; ours is not a Cache
                raise ModelError("engine ort runs Whisper with greedy decoding only (num_beams=1)")
            return super().generate(*args, **kwargs)

        def forward(self, decoder_input_ids: Any = None, encoder_outputs: Any = None,
                    decoder_attention_mask: Any = None, **kwargs: Any) -> Any:
            cache = kwargs.get(cache_name)
            if cache is None or not isinstance(encoder_outputs, OrtEncoderOutput):
                raise ModelError("engine ort runs Whisper through generate() with its cache only")
            if decoder_attention_mask is not None and not bool(decoder_attention_mask.all()):
                raise ModelError("engine ort: padded decoder prompts (condition_on_prev_tokens) are not supported")
            with torch.profiler.record_function("asrperf::decoder"):
                logits = runner.step(cache, decoder_input_ids.cpu().numpy(), encoder_outputs.cross_kv)
            return Seq2SeqLMOutput(logits=torch.from_numpy(logits), **{cache_name: cache})

    return OrtWhisper().eval()
