"""LLaMA-family frontend: a Hugging Face model folder or a ``torch.export`` archive to a
:class:`~compiler.decoder.FloatDecoder`.

Sources
-------
* Hugging Face folder (``config.json`` + ``*.safetensors``), read a block at a time
  (:func:`open_decoder`, :class:`_FolderBlocks`): block ``i`` is recognised on a model of its
  own, the folder's config with one layer (the ``i``-th entry of per-layer lists such as
  ``layer_types``) whose layer 0 holds block ``i``'s tensors, read from the safetensors files
  by name, with the embedding, final norm and LM head (block 0's model holds them whole and
  gives the decoder's; the later blocks' models hold their first rows). Each model is built by
  ``transformers`` offline (float32, eval mode) and ``torch.export``-ed here with an example of
  a few token ids, ``use_cache=False`` and a dynamic sequence length, so only one block is in
  float at a time (the whole float32 model of a 1B-parameter checkpoint is 4.9 GB). Every
  tensor name and shape of the checkpoint is checked against the config's model (built on
  the meta device) before any is read. A folder with only ``pytorch_model.bin`` (a pickle)
  is refused unless the caller trusts it.
* ``torch.export.save`` archive whose graph holds ``aten.embedding`` (float32 model with
  ``input_ids`` as the first user input), read by
  :func:`~hwflow.compiler.export_archive.load_exported_program` (nothing in it is unpickled
  unless the caller trusts the file).

Both go through the same pattern recogniser on the ATen graph. The recognised patterns
(``x`` is the residual stream; ``cast`` is a float32 ``to``/``_to_copy``, ``alias``,
``clone``, ``contiguous``, ``detach`` or eval ``dropout``, which are looked through):

* embedding: ``embedding(W, input_ids)`` -- the start of the residual stream;
* RMSNorm: ``mul(gamma, cast(mul(x, rsqrt(add(mean(pow(x, 2), [-1], keepdim), eps)))))``
  (either operand order); ``eps`` is the add's constant, ``gamma`` is folded into the
  linears that read the norm;
* linear: ``linear(x, W[, b])`` with constant ``W``/``b``; a contiguous part of a linear's
  output along its last dim -- ``slice(linear, -1, a, b)`` or ``getitem(chunk/split(linear,
  ..., -1), i)`` -- is the linear of rows ``a:b`` of ``W``/``b``, so fused projections (Phi-3's
  ``qkv_proj`` and ``gate_up_proj``) come out as separate q/k/v and gate/up linears;
* attention: ``q/k/v = transpose(view(linear(n), [B, S, heads, hd]), 1, 2)``; RoPE on q and k
  is ``add(mul(x, cos), mul(cat([neg(slice(x, -1, hd/2, end)), slice(x, -1, 0, hd/2)]), sin))``
  with cos/sin computed from an ``inv_freq`` constant: the model's own rotary frequencies, which
  the RoPE table is built from (so every rope type that only rescales them works: llama3,
  linear, YaRN, ...; ``theta`` is recovered for reports); a constant multiplying ``cos``/``sin``
  is the ``attention_scaling``; ``cat([rope(x), slice(x, -1, hd, end)], -1)`` (Phi-3's
  partial-rotary code with nothing passed through) is the RoPE itself, a non-empty pass-through
  (a partial rotary) is refused; GQA by ``repeat_kv`` (``reshape(expand(unsqueeze(k, 2)))``) or
  ``enable_gqa``; ``scaled_dot_product_attention`` with no dropout and the default scale
  ``1/sqrt(hd)``; its output ``reshape/transpose(1, 2)/reshape`` to ``[B, S, heads*hd]`` feeds
  ``o_proj``; ``x = add(x, o_proj(...))``;
* SwiGLU MLP: ``down(mul(silu(gate(n)), up(n)))``, ``x = add(x, down(...))``;
* BitNet b1.58 (``model_type`` ``bitnet``): the MLP's activation is ``square(relu(gate(n)))``
  (``hidden_act`` ``relu2``) and an RMSNorm may sit on the product before ``down``
  (``ffn_sub_norm``) and on the attention output before ``o_proj`` (``attn_sub_norm``);
* head: ``lm_head(final_rmsnorm(x))`` is the graph's (first) output.

The attention mask and the positions are side inputs built from ``input_ids`` only; they are
not on the hidden-state path and are not inspected: the mask is causal, with the sliding
window per layer that a Hugging Face config gives (``llm_config.attention_windows``; an
archive carries no config, so its attention is full causal). After recognition the decoder is
checked numerically: the recognised float decoder must reproduce the model's logits on a few
tokens, so a mask or variant that the patterns do not see (soft-capping, ...) is refused, not
miscompiled. A folder's blocks are checked one by one, each on its one-layer model (with its
own sliding window); that model's block has the attributes of the whole model's block ``i``
(sizes, scale, soft-cap, window, layer type: checked), so the recogniser sees, folds and
checks the block as it would inside the whole model.

Any ATen op on the hidden-state path outside these patterns raises
:class:`~compiler.errors.UnsupportedOpError` naming the op, the node and the source line.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .decoder import DecoderShape, FloatDecoder, FloatLayer, LazyLayers
from .errors import FrontendError, UnsupportedOpError
from .export_archive import load_exported_program, machine_memory_bytes
from .frontend import check_finite, detect_format, program_tensors
from .llm_config import SSM_SHAPE_FAMILIES, attention_windows, rope_type_and_theta

__all__ = ["is_decoder_source", "load_decoder", "open_decoder",
           "decoder_from_exported_program", "DEFAULT_MAX_CONTEXT"]

#: Default largest context when the caller gives none (capped by max_position_embeddings).
DEFAULT_MAX_CONTEXT = 2048
#: Tokens of the example input used to export and to check the recognised decoder.
EXAMPLE_TOKENS = 8

_CASTS = {"to", "_to_copy", "alias", "clone", "contiguous", "detach", "dropout", "type_as",
          "lift_fresh_copy"}
_LAYOUT = {"view", "reshape", "_unsafe_view", "transpose", "contiguous", "clone", "alias"}
#: Ops that may appear on the hidden-state path (as parts of the patterns above).
_PATH_OPS = _CASTS | _LAYOUT | {
    "embedding", "pow", "mean", "add", "rsqrt", "mul", "linear", "unsqueeze", "expand", "slice",
    "neg", "cat", "scaled_dot_product_attention", "silu", "relu", "square", "chunk", "split",
    "split_with_sizes", "getitem", "matmul", "softmax", "_softmax", "tanh", "div", "gelu"}
#: Ops that read a hidden-state tensor without producing one (metadata checks, sizes).
_SIDE_OPS = {"_assert_tensor_metadata", "sym_size", "sym_numel", "sym_stride"}


# ------------------------------------------------------------------------------ detection

def _hf_weights(folder: Path) -> tuple[list[Path], list[Path]]:
    safet = sorted(folder.glob("*.safetensors"))
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    return safet, pickles


def is_decoder_source(path) -> bool:
    """Whether ``path`` is something :func:`load_decoder` reads.

    True for a Hugging Face folder (``config.json`` with ``*.safetensors`` -- or with only
    ``pytorch_model*.bin``, so that :func:`load_decoder` can explain the trust rule) and for a
    ``torch.export`` archive whose graph contains ``aten.embedding``. Reads no weights and runs
    no code: the archive's graph JSON is searched as text.
    """
    p = Path(path)
    if p.is_dir():
        safet, pickles = _hf_weights(p)
        return (p / "config.json").is_file() and bool(safet or pickles)
    if not p.is_file() or detect_format(p) != "export":
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            for n in zf.namelist():
                if n.endswith(".json") and ("/models/" in n or n.startswith("models/")
                                            or n.endswith("serialized_exported_program.json")):
                    if b"aten.embedding" in zf.read(n):
                        return True
    except (zipfile.BadZipFile, OSError):
        return False
    return False


# ------------------------------------------------------------------------------- loading

def load_decoder(path, trust_model: bool = False, max_context: int | None = None,
                 fold_gammas: bool | None = None) -> FloatDecoder:
    """Load a LLaMA-family decoder as a :class:`FloatDecoder`.

    Parameters
    ----------
    path : path-like
        A Hugging Face model folder (``config.json`` + ``*.safetensors``) or a
        ``torch.export.save`` archive of a decoder (``input_ids`` -> logits).
    trust_model : bool
        Allow a folder whose weights are only a pickled ``pytorch_model.bin`` (loading it runs
        code stored in the file).
    max_context : int, optional
        Largest context (prompt + generated tokens) to compile for; default
        ``min(max_position_embeddings, 2048)``. Stored in ``FloatDecoder.max_context``.
    fold_gammas : bool, optional
        Fold the block RMSNorm gammas into the linears that read them (``True``), or keep
        them in the ``FloatLayer.*_gamma`` fields with raw weights (``False``: what a ternary
        compile needs, since a ternary weight cannot absorb a gamma). Default: fold, except
        for BitNet (``model_type`` ``bitnet``). The final norm's gamma is always folded into
        the LM head.

    Returns
    -------
    FloatDecoder
        Float32 weights with the RMSNorm gammas folded as ``fold_gammas`` says.

    Raises
    ------
    FrontendError
        Missing or unreadable source, untrusted pickle, unknown ``model_type``, bad
        ``max_context``.
    UnsupportedOpError
        An op, activation or RoPE variant outside the recognised patterns.
    """
    fd = open_decoder(path, trust_model, max_context, fold_gammas)
    if not isinstance(fd.layers, list):     # a folder's: every block recognised now
        fd = dataclasses.replace(fd, layers=list(fd.layers))
    return fd


def open_decoder(path, trust_model: bool = False, max_context: int | None = None,
                 fold_gammas: bool | None = None) -> FloatDecoder:
    """:func:`load_decoder` without holding every block: for a Hugging Face folder the
    result's ``layers`` is a sequence that reads and recognises block ``i`` when it is
    indexed (:class:`_FolderBlocks`), so that a compile can go through the blocks one at a
    time with only one of them in float (``compiler.llm_quant.quantize_decoder``). The
    embedding, the LM head and block 0 are recognised here (the first pass), and every
    error the folder's config and tensor names can show is raised here; an error inside a
    later block is raised when it is read. A ``torch.export`` archive is one program: its
    decoder is loaded whole (``layers`` is a list). Parameters and errors as
    :func:`load_decoder`."""
    p = Path(path)
    if not p.exists():
        raise FrontendError(f"{p}: no such file or folder")
    if p.is_dir():
        return _open_hf(p, trust_model, max_context, fold_gammas)
    if detect_format(p) != "export":
        raise FrontendError(f"{p} is not a decoder source (expected a Hugging Face folder with "
                            "config.json + *.safetensors, or a torch.export.save archive)")
    ep = load_exported_program(p, trust_model)
    name = re.sub(r"\W", "_", p.stem) or "model"
    fd = decoder_from_exported_program(ep, name=name, source=f"export:{p}",
                                       max_context=max_context, fold_gammas=fold_gammas)
    del ep              # its reference cycles keep the weights otherwise
    gc.collect()
    return fd


def config_error(cfg_path, model_type, e: BaseException) -> FrontendError:
    """The one-line error for a config transformers refuses: an unknown ``model_type``, or the
    reason its validators give (e.g. a hidden size that is not a multiple of the heads)."""
    import transformers
    from transformers import CONFIG_MAPPING

    if model_type is None or model_type not in CONFIG_MAPPING:
        known = "no model_type" if model_type is None else f"model_type '{model_type}'"
        return FrontendError(f"{cfg_path}: {known} is not a model transformers "
                             f"{transformers.__version__} knows; give a config.json with a "
                             "known model_type (llama, mistral, qwen2, bitnet, ...)")
    return FrontendError(f"{cfg_path}: not a valid {model_type} config "
                         f"({_innermost_reason(e)[:200]})")


def _innermost_reason(e: BaseException) -> str:
    """transformers' validation errors put the reason on their last line
    (``Class validation error ...:\n    ValueError: The hidden size (32) is not a multiple
    ...``)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""


#: State-space model families (``compiler.ssm_frontend``; those compiled:
#: ``llm_config.SSM_SHAPE_FAMILIES``).
STATE_SPACE_TYPES = ("mamba", "mamba2", "falcon_mamba")


def _hf_config_checks(folder: Path, cfg: dict) -> None:
    """Refuse configs the recogniser cannot serve before building anything."""
    mt = cfg.get("model_type")
    if mt in STATE_SPACE_TYPES:
        served = ("`hwflow compile` and `sim` take it (compiler.lm.open_model), this path does "
                  "not" if mt in SSM_SHAPE_FAMILIES else "hwflow compiles Mamba (model_type "
                  "'mamba') so far, not this family")
        raise FrontendError(f"{folder}: model_type '{mt}' is a state-space model (Mamba), not a "
                            f"transformer decoder; {served}")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish", "relu2", "gelu_pytorch_tanh"):
        raise UnsupportedOpError(f"{folder}/config.json: hidden_act '{act}' is not supported "
                                 "(the MLP must be SwiGLU, hidden_act 'silu', BitNet's "
                                 "squared ReLU, 'relu2', or Gemma's 'gelu_pytorch_tanh')")


def _open_hf(folder: Path, trust_model: bool, max_context: int | None,
             fold_gammas: bool | None = None) -> FloatDecoder:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FrontendError(f"{folder}: not a Hugging Face model folder (no config.json); a "
                            "model folder holds config.json and *.safetensors, as "
                            "save_pretrained writes them")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise FrontendError(f"{cfg_path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise FrontendError(f"{cfg_path}: holds a JSON {type(cfg).__name__}, not a transformers "
                            "config (a JSON object with model_type, hidden_size, ...)")
    safet, pickles = _hf_weights(folder)
    if not safet and not pickles:
        raise FrontendError(f"{folder}: no *.safetensors weights next to config.json")
    if not safet and not trust_model:
        raise FrontendError(f"{folder} holds only pickled weights (pytorch_model.bin): loading "
                            "them would execute code stored in the file; if you trust it pass "
                            "--trust-model (trust_model=True), or convert it to safetensors")
    try:
        import transformers
        from transformers import AutoConfig

        transformers.utils.logging.disable_progress_bar()   # hwflow prints its own summary
    except ImportError:
        raise FrontendError("reading a Hugging Face folder needs the 'transformers' package "
                            "(pip install transformers safetensors)") from None
    model_type = cfg.get("model_type")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise config_error(cfg_path, model_type, e) from None
    max_pos = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_MAX_CONTEXT)
    max_context = _check_max_context(max_context, max_pos, str(folder))
    _hf_config_checks(folder, cfg)
    shell = _meta_model(folder, config)
    _check_model_fits_memory(cfg_path, shell)
    ckpt = _Checkpoint(safet or pickles)
    _check_checkpoint(folder, ckpt, shell)
    # a LLaMA-typed checkpoint whose block linears are already ternary: keep the gammas out of
    # them (folding would scale every column) so that they stay ternary
    ternary = model_type != "bitnet" and _ternary_linears(ckpt)
    if ternary:
        fold_gammas = False
    rope_type, rope_theta = rope_type_and_theta(config)
    layers = int(config.num_hidden_layers)
    blocks = _FolderBlocks(folder, config, shell, ckpt, attention_windows(config, layers),
                           dict(name=re.sub(r"\W", "_", folder.name) or "model",
                                source=f"hf:{folder}", max_context=max_context,
                                max_position=max_pos, family=model_type or "llama",
                                rope_type=rope_type, rope_theta=rope_theta,
                                fold_gammas=fold_gammas))
    first = blocks.first()
    return dataclasses.replace(first, layers=blocks, ternary_weights=ternary,
                               shape=dataclasses.replace(first.shape, layers=layers,
                                                         windows=blocks.windows))


#: The config lists with an entry per layer: a one-layer model of block ``i`` gets entry ``i``.
_PER_LAYER = ("layer_types", "mlp_layer_types")
#: Vocabulary of the one-layer models of blocks 1, 2, ...: the first rows of the embedding
#: (and of an untied LM head). The block's arrays do not depend on it; its numerics check runs
#: on ids in it; and a model of the full vocabulary would hold the 1 GB float32 embedding of
#: Llama-3.2-1B once more per block.
_BLOCK_VOCAB = 256


class _FolderBlocks(LazyLayers):
    """The blocks of a Hugging Face folder, each recognised when it is indexed.

    Block ``i`` is recognised on a model of its own: the folder's config with one layer (and
    the ``i``-th entry of its per-layer lists, :data:`_PER_LAYER`) whose layer 0 holds block
    ``i``'s tensors, read from the weight files (``model.layers.{i}.`` -> ``model.layers.0.``)
    with the embedding, final norm and LM head, built in float32 and exported as the whole
    model was; :func:`decoder_from_exported_program` recognises it and checks it against that
    model's logits (with block ``i``'s sliding window). The pattern recogniser sees the block
    as it is inside the whole model (each of its modules has the attributes of the whole
    model's block ``i``, checked), so its arrays are the ones it has in the whole model's
    graph: the same constants, the same folding. :meth:`first` recognises block 0 with the
    whole embedding and LM head (which the decoder keeps); the models of the later blocks
    hold only the first :data:`_BLOCK_VOCAB` rows of them.
    """

    def __init__(self, folder: Path, config, shell, ckpt: _Checkpoint, windows: tuple,
                 recognise: dict):
        self.folder, self.config, self.shell, self.ckpt = folder, config, shell, ckpt
        self.windows = windows
        self.recognise = recognise
        self.n = int(config.num_hidden_layers)
        self.shape = None           # block 0's (first): every block must agree with it
        self._first = None
        self._stem = _layer_stem(shell)
        self._vocab_names = _vocab_tensors(shell)

    def layer(self, i: int):
        if i == 0 and self._first is not None:     # recognised by first(): handed out once
            layer, self._first = self._first, None
            return layer
        return self._recognise(i, _BLOCK_VOCAB).layers[0]

    def first(self) -> FloatDecoder:
        """Block 0's one-layer decoder with the whole embedding and LM head."""
        if self.n < 1:
            raise FrontendError(f"hf:{self.folder}: no decoder block between the embedding "
                                "and the lm_head")
        fd = self._recognise(0, None)
        self.shape, self._first = fd.shape, fd.layers[0]
        return fd

    def _recognise(self, i: int, vocab: int | None) -> FloatDecoder:
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        config = _block_config(self.config, i, vocab)
        where = f"hf:{self.folder}"
        state = self.ckpt.block(i, self._stem, vocab, self._vocab_names, where)
        try:
            with no_init_weights():         # every tensor is loaded below
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.tie_weights()
            missing, _ = model.load_state_dict(state, strict=False)
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"{self.folder}: transformers cannot build the model of block "
                                f"{i} ({type(e).__name__}: {_first_line(e)[:160]})") from None
        del state
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
            n for n, _ in model.named_parameters()}
        if set(missing) - tied:
            raise FrontendError(f"{self.folder}: tensor '{sorted(set(missing) - tied)[0]}' of "
                                f"block {i} is missing from the weights")
        _check_same_block(self.shell.get_submodule(f"{self._stem}{i}"),
                          model.get_submodule(f"{self._stem}0"), i, where)
        model = model.eval()
        ids = _example_ids(int(config.vocab_size), EXAMPLE_TOKENS)
        ep = _export(model, ids, self.recognise["max_position"], str(self.folder))
        fd = decoder_from_exported_program(
            ep, check_model=model, windows=(self.windows[i],) if self.windows else (),
            **self.recognise)
        # The model and its program hold reference cycles: without a collection here their
        # float32 parameters would stay until the next full collection (fd keeps views of the
        # ones it did not fold: the embedding, o, down).
        del model, ep
        gc.collect()
        if self.shape is not None:
            _check_same_shape(self.shape, fd.shape, i, where)
        return fd


def _block_config(config, i: int, vocab: int | None):
    """The config of the one-layer model of block ``i`` (:class:`_FolderBlocks`); ``vocab``:
    its vocabulary (None: the folder's), without token ids outside it."""
    c = copy.deepcopy(config)
    n = int(config.num_hidden_layers)
    for key in _PER_LAYER:
        v = getattr(config, key, None)
        if isinstance(v, (list, tuple)) and len(v) == n:
            setattr(c, key, [v[i]])
    c.num_hidden_layers = 1
    if vocab is not None and vocab < int(config.vocab_size):
        c.vocab_size = vocab
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(c, key, None) is not None:
                setattr(c, key, None)
    return c


def _layer_stem(shell) -> str:
    """The prefix of the blocks' names (``model.layers.``), from the model's modules."""
    for name, _ in shell.named_modules():
        m = re.fullmatch(r"(.*\blayers\.)0", name)
        if m:
            return m.group(1)
    raise FrontendError("the model has no 'layers.0' module: not a decoder of stacked blocks")


def _vocab_tensors(shell) -> set:
    """Names of the embedding's and the LM head's weights (rows = the vocabulary)."""
    names = set()
    for mod in (shell.get_input_embeddings(), shell.get_output_embeddings()):
        w = getattr(mod, "weight", None)
        names |= {n for n, p in shell.named_parameters(remove_duplicate=False) if p is w}
    return names


def _check_same_block(whole, one, i: int, where: str) -> None:
    """Every module of the one-layer model's block has the plain attributes (sizes, scale,
    soft-cap, window, layer type, ...) of the whole model's block ``i`` but its index."""
    mods = dict(one.named_modules())
    for name, mod in whole.named_modules():
        other = mods.get(name)
        a, b = _plain_attrs(mod), _plain_attrs(other) if other is not None else None
        if a != b:
            diff = sorted(k for k in set(a) | set(b or {}) if (b or {}).get(k) != a.get(k))
            raise UnsupportedOpError(f"{where}: block {i} cannot be recognised alone: its "
                                     f"module '{name or 'layer'}' differs from the one-layer "
                                     f"model's ({', '.join(diff[:3])})")


def _plain_attrs(mod) -> dict:
    return {k: v for k, v in vars(mod).items()
            if not k.startswith("_") and k not in ("layer_idx", "training")
            and isinstance(v, (int, float, str, bool, tuple, type(None)))}


def _check_same_shape(ref: DecoderShape, s: DecoderShape, i: int, where: str) -> None:
    """Block ``i``'s shape agrees with block 0's where the whole model's recogniser checks
    the blocks against each other."""
    if (s.heads, s.kv_heads, s.head_dim) != (ref.heads, ref.kv_heads, ref.head_dim):
        raise UnsupportedOpError(f"{where}: block {i} has different head numbers")
    if (s.attn_scale, s.attn_softcap) != (ref.attn_scale, ref.attn_softcap):
        raise UnsupportedOpError(f"{where}: block {i} has a different attention scale or "
                                 "soft-cap")
    if abs(s.rope_theta - ref.rope_theta) > 1e-6 * ref.rope_theta or abs(
            s.rope_scaling - ref.rope_scaling) > 1e-9 or s.rope_inv_freq != ref.rope_inv_freq:
        raise UnsupportedOpError(f"{where}: blocks use different RoPE parameters (block {i})")
    if abs(s.rms_eps - ref.rms_eps) > 1e-12 * max(abs(ref.rms_eps), 1.0):
        raise UnsupportedOpError(f"{where}: RMSNorm eps differ between blocks ({s.rms_eps} vs "
                                 f"{ref.rms_eps})")


class _Checkpoint:
    """A folder's weight files: every tensor's name and shape from the file headers, each
    tensor read when it is asked for (safetensors: no data is read before; trusted pickles:
    loaded memory-mapped)."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.file: dict[str, Path] = {}
        self.shapes: dict[str, tuple] = {}
        self._pickled: dict[Path, dict] = {}
        for f in files:
            if f.suffix == ".safetensors":
                try:
                    with safe_open(str(f), framework="pt") as h:
                        for k in h.keys():
                            self.file[k], self.shapes[k] = f, tuple(h.get_slice(k).get_shape())
                except Exception as e:  # noqa: BLE001
                    raise FrontendError(f"{f}: not a readable safetensors file "
                                        f"({_first_line(e)[:160]})") from None
            else:
                sd = _load_pickle(f)
                self._pickled[f] = sd
                for k, t in sd.items():
                    if isinstance(t, torch.Tensor):
                        self.file[k], self.shapes[k] = f, tuple(t.shape)

    def tensor(self, name: str, rows: int | None = None) -> torch.Tensor:
        """Tensor ``name`` as stored (its first ``rows`` rows where given)."""
        from safetensors import safe_open

        f = self.file[name]
        if f in self._pickled:
            t = self._pickled[f][name]
            return t if rows is None else t[:rows]
        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(name) if rows is None else h.get_slice(name)[:rows]

    def block(self, i: int, stem: str, vocab: int | None, vocab_names: set, where: str) -> dict:
        """The state dict of block ``i``'s one-layer model (:class:`_FolderBlocks`): block
        ``i``'s tensors as block 0's and every tensor outside the blocks, the embedding and
        LM head cut to ``vocab`` rows (None: whole); NaN or Inf is refused by the tensor's
        name in the checkpoint."""
        own = f"{stem}{i}."
        out = {}
        for name in self.file:
            if name.startswith(own):
                key = f"{stem}0." + name[len(own):]
            elif re.match(re.escape(stem) + r"\d+\.", name):
                continue
            else:
                key = name
            t = self.tensor(name, vocab if name in vocab_names else None)
            check_finite([(name, t)], where)
            out[key] = t
        return out


def _load_pickle(f: Path) -> dict:
    """A trusted ``pytorch_model*.bin``: its state dict, memory-mapped where the file allows."""
    try:
        try:
            sd = torch.load(str(f), map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:    # a legacy (not zip) file cannot be memory-mapped
            sd = torch.load(str(f), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"{f}: cannot load the pickled weights ({type(e).__name__}: "
                            f"{_first_line(e)[:160]})") from None
    if not isinstance(sd, dict):
        raise FrontendError(f"{f}: holds a {type(sd).__name__}, not a state dict of tensors")
    return sd


def _ternary_linears(ckpt: _Checkpoint) -> bool:
    """Whether every q/k/v/o/gate/up/down weight of every block (fused ones included: Phi-3's
    qkv_proj, gate_up_proj) is ``0/+-s`` for one ``s`` (``golden.ternary.detect_ternary``);
    read one tensor at a time, up to the first that is not."""
    from hwflow.golden.ternary import detect_ternary

    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
             "qkv_proj", "gate_up_proj")
    found = [n for n in ckpt.file if n.endswith(".weight") and n.split(".")[-2] in names]
    return bool(found) and all(
        detect_ternary(ckpt.tensor(n).to(torch.float64).numpy()) is not None for n in found)


# Compiling from weights holds the quantized decoder (int8: about a byte per parameter), the
# float32 LM head and one float32 block at a time (_FolderBlocks; the float32 embedding only
# until it is quantized), then the quantized decoder and the memory image (another byte per
# parameter) while lowering. Measured on Llama-3.2-1B (1.24 B parameters, 4.94 GB in float32,
# 2.47 GB in bfloat16) by benchmarks/bench_compile_weights.py: a peak RSS of 4.12 GB = 0.83
# times the float32 parameter bytes, 1.67 times the checkpoint, in the lowering. (It was
# 11.1 GB = 2.25x with the whole float32 model loaded, and 19.1 GB = 3.85x before that model
# was freed after loading.) Larger models need relatively less: their embedding and LM head
# are a smaller part of them.
_COPIES_IN_MEMORY = 0.85


def _meta_model(folder: Path, config):
    """The whole model on the meta device (shapes, no storage): the tensor names and shapes
    the checkpoint must hold, and each block's modules for :func:`_check_same_block`."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"{folder}: transformers cannot build the model "
                            f"({type(e).__name__}: {_first_line(e)[:160]})") from None


def _check_model_fits_memory(cfg_path: Path, shell) -> None:
    """Refuse, before anything is allocated, a config whose compile from weights cannot be
    held in this machine's memory (a config can declare any size)."""
    n = sum(p.numel() for p in shell.parameters())
    need, have = n * 4 * _COPIES_IN_MEMORY, machine_memory_bytes()
    if need > have:
        raise FrontendError(f"{cfg_path} declares {n / 1e9:.2f} B parameters ({n * 4 / 1e9:.1f} "
                            f"GB in float32); compiling them from weights needs about "
                            f"{need / 1e9:.0f} GB of memory, this machine has {have / 1e9:.0f} "
                            "GB; predict it without weights with `hwflow compile CONFIG "
                            "--shape-only`")


def _check_checkpoint(folder: Path, ckpt: _Checkpoint, shell) -> None:
    """Refuse a checkpoint that does not fill the model exactly, from the file headers alone:
    transformers would initialise a missing or mis-shaped tensor at random (a different model
    on every run); an unexpected tensor means the checkpoint is not this architecture."""
    what = "safetensors weights"
    want = {n: tuple(t.shape) for n, t in shell.state_dict().items()}
    tied = {n for n, _ in shell.named_parameters(remove_duplicate=False)} - {
        n for n, _ in shell.named_parameters()}

    def ignored(n, attr):
        return any(re.search(pat, n) for pat in getattr(shell, attr, None) or ())

    mismatched = sorted(n for n in want if n in ckpt.shapes and ckpt.shapes[n] != want[n])
    if mismatched:
        n = mismatched[0]
        raise FrontendError(f"{folder}: tensor '{n}' has shape {list(ckpt.shapes[n])} in the "
                            f"checkpoint, the config needs {list(want[n])}{_more(mismatched)}; "
                            f"the {what} do not match config.json")
    missing = sorted(n for n in want if n not in ckpt.shapes and n not in tied
                     and not ignored(n, "_keys_to_ignore_on_load_missing"))
    if missing:
        raise FrontendError(f"{folder}: tensor '{missing[0]}' is missing from the {what}"
                            f"{_more(missing)}; transformers would fill it with random values")
    unexpected = sorted(n for n in ckpt.shapes if n not in want
                        and not ignored(n, "_keys_to_ignore_on_load_unexpected"))
    if unexpected:
        raise FrontendError(f"{folder}: tensor '{unexpected[0]}' in the {what} is not part of "
                            f"the model config.json describes{_more(unexpected)}")


def _more(items) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _check_max_context(max_context, max_pos: int, where: str) -> int:
    if max_context is None:
        return min(max_pos, DEFAULT_MAX_CONTEXT)
    max_context = int(max_context)
    if max_context < 1:
        raise FrontendError(f"max_context must be >= 1, got {max_context}")
    if max_context > max_pos:
        raise FrontendError(f"max_context {max_context} is larger than the model's "
                            f"max_position_embeddings {max_pos} ({where})")
    return max_context


def _example_ids(vocab: int, n: int) -> torch.Tensor:
    # Distinct, deterministic, in-range ids: a spread over the vocabulary.
    return torch.tensor([[(7 * i + 1) % max(vocab, 1) for i in range(n)]], dtype=torch.long)


def _export(model, ids: torch.Tensor, max_pos: int, where: str):
    """torch.export with a dynamic sequence length, falling back to the example's length."""
    from torch.export import Dim

    kwargs = {"use_cache": False}
    try:
        seq = Dim("seq", min=2, max=max(max_pos, ids.shape[1]))
        return torch.export.export(model, (ids,), kwargs=kwargs,
                                   dynamic_shapes={"input_ids": {1: seq}, "use_cache": None})
    except Exception:  # noqa: BLE001 -- a static export serves the recogniser as well
        pass
    try:
        return torch.export.export(model, (ids,), kwargs=kwargs)
    except Exception as e:  # noqa: BLE001
        raise FrontendError(f"torch.export failed on {where} ({type(e).__name__}: "
                            f"{_first_line(e)[:160]})") from None


# ----------------------------------------------------------------------------- graph view

def _opname(node) -> str:
    """Short ATen name ('linear') of a call_function node, else its target's name."""
    t = node.target
    pkt = getattr(t, "overloadpacket", None)
    if pkt is not None:
        return pkt.__name__
    return getattr(t, "__name__", str(t))


def _fullname(node) -> str:
    t = node.target
    if hasattr(t, "overloadpacket"):
        return str(t)  # e.g. aten.gelu.default
    return getattr(t, "__name__", str(t))


def _where(node) -> str:
    """``file.py:line`` of the model code that created a node (a modeling_* file if any)."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in frames if not f[0].startswith(torch_dir)]
    if not frames:
        return "no source line recorded"
    modeling = [f for f in frames if os.path.basename(f[0]).startswith("modeling_")]
    f = (modeling or frames)[-1]
    return f"{os.path.basename(f[0])}:{f[1]}"


def _unsupported(node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"unsupported op {_fullname(node)} (node {node.name}, "
                              f"{_where(node)}): {why}")


class _Graph:
    """An ExportedProgram's top graph with its constants, HOP boundaries resolved."""

    def __init__(self, ep, family: str = "LLaMA-family decoder"):
        self.ep = ep
        self.family = family        # what the graph is recognised as, for messages
        self.g = ep.graph
        self.consts: dict[str, torch.Tensor] = {}
        self.user_inputs: list = []
        sig = ep.graph_signature
        kinds = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        state = ep.state_dict
        constants = getattr(ep, "constants", {}) or {}
        for n in self.g.nodes:
            if n.op != "placeholder":
                continue
            spec = kinds.get(n.name)
            if spec is None or spec.kind.name == "USER_INPUT":
                self.user_inputs.append(n)
                continue
            t = state.get(spec.target) if spec.target in state else constants.get(spec.target)
            if isinstance(t, torch.Tensor):
                self.consts[n.name] = t.detach()
        self.used: set = set()
        self.path: set = set()      # the hidden-state path (decoder_from_exported_program)

    def const(self, node) -> np.ndarray | None:
        """Float32 numpy value of a constant (parameter/buffer) node, looked through casts.

        Read-only, and a view of the program's tensor where that is float32 already: a copy
        of every weight would hold the model twice while it is recognised (the embedding of
        Llama-3.2-1B alone is 1 GB), and nothing may write into the model that the
        recognised decoder is checked against.
        """
        node = self.skip(node)
        t = None
        if getattr(node, "op", None) == "placeholder" and node.name in self.consts:
            t = self.consts[node.name]
        elif getattr(node, "op", None) == "get_attr":
            t = getattr(self.ep.graph_module, node.target, None)
        if not isinstance(t, torch.Tensor):
            return None
        a = t.detach().to(torch.float32).numpy()
        a.flags.writeable = False
        return a

    def skip(self, node):
        """Look through float32 casts and identities, marking them used."""
        while getattr(node, "op", None) == "call_function" and _opname(node) in _CASTS:
            name = _opname(node)
            if name == "to" or name == "_to_copy":
                dt = node.kwargs.get("dtype")
                if dt is None:
                    dt = next((a for a in node.args[1:] if isinstance(a, torch.dtype)), None)
                if dt is not None and dt != torch.float32:
                    raise _unsupported(node, f"cast to {dt}; export the model in float32")
            if name == "dropout" and len(node.args) > 2 and node.args[2]:
                raise _unsupported(node, "dropout in training mode; export in eval mode")
            self.used.add(node)
            node = node.args[0]
        return node

    def is_call(self, node, *names) -> bool:
        return getattr(node, "op", None) == "call_function" and _opname(node) in names

    def expect(self, node, *names, what: str):
        node = self.skip(node)
        if not self.is_call(node, *names):
            if getattr(node, "op", None) == "call_function":
                raise _unsupported(node, f"expected {what}")
            raise FrontendError(f"graph node {getattr(node, 'name', node)} is not {what}; the "
                                f"graph is not a recognised {self.family}")
        self.used.add(node)
        return node


def _shape(node) -> tuple:
    v = node.meta.get("val")
    return tuple(v.shape) if v is not None and hasattr(v, "shape") else ()


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------ recognisers

def _output_part(G: _Graph, node, what: str):
    """A last-dim part of a linear's output -> (linear node, ``slice`` of its output rows);
    ``(node, None)`` when ``node`` is no ``slice`` or ``getitem`` of a ``chunk``/``split``."""
    n = G.skip(node)
    if G.is_call(n, "slice"):
        src, dim = n.args[0], (n.args[1] if len(n.args) > 1 else 0)
        start, end = (n.args[2] if len(n.args) > 2 else None), (
            n.args[3] if len(n.args) > 3 else None)
        if (n.args[4] if len(n.args) > 4 else 1) != 1:
            raise _unsupported(n, f"{what}: a strided slice of a linear's output")
    elif getattr(n, "op", None) == "call_function" and _opname(n) == "getitem" and \
            G.is_call(G.skip(n.args[0]), "chunk", "split", "split_with_sizes"):
        parts = G.skip(n.args[0])
        src = parts.args[0]
        dim = parts.kwargs.get("dim", parts.args[2] if len(parts.args) > 2 else 0)
        # the parts' extents along dim, as traced (chunk's rounding, split's last remainder)
        sizes = [_int(v.shape[int(dim)]) for v in parts.meta.get("val") or ()]
        if not sizes or None in sizes:
            raise _unsupported(parts, f"{what}: the parts of a linear's output need known sizes")
        i = int(n.args[1])
        start, end = sum(sizes[:i]), sum(sizes[:i + 1])
        G.used.add(parts)
    else:
        return node, None
    lin = G.skip(src)
    rank = len(_shape(lin))
    if not G.is_call(lin, "linear") or _int(dim) is None or int(dim) % max(rank, 1) != rank - 1:
        raise _unsupported(n, f"{what}: only a linear's output may be split, along its last dim")
    out = _int(_shape(lin)[-1])
    rows = slice(*slice(_int(start), _int(end)).indices(out or 0))
    if rows.start >= rows.stop:
        raise _unsupported(n, f"{what}: an empty part of a linear's output")
    G.used.add(n)
    return lin, rows


def _match_linear(G: _Graph, node, what: str):
    """``linear(x, W[, b])`` -> (x, W [out, in], b or None); a part of a linear's output along
    its last dim (:func:`_output_part`) is the linear of that part of ``W``'s rows and ``b``."""
    node, rows = _output_part(G, node, what)
    n = G.expect(node, "linear", what=what)
    w = G.const(n.args[1])
    if w is None or w.ndim != 2:
        raise _unsupported(n, f"{what}: the weight must be a constant matrix")
    b = G.const(n.args[2]) if len(n.args) > 2 and n.args[2] is not None else None
    if rows is not None:
        w, b = w[rows].copy(), (None if b is None else b[rows].copy())
    return n.args[0], w, b


def _gamma_const(G: _Graph, node) -> np.ndarray | None:
    """An RMSNorm's gamma: a 1-D constant, or ``add(w, c)`` of one and a number (Gemma's
    ``(1 + w)`` norms) as its value; None otherwise."""
    g = G.const(node)
    if g is None:
        n = G.skip(node)
        if not G.is_call(n, "add") or len(n.args) != 2:
            return None
        a, b = n.args
        if isinstance(a, (int, float)):
            a, b = b, a
        if not isinstance(b, (int, float)) or isinstance(a, (int, float)):
            return None
        g = G.const(a)
        if g is None or g.ndim != 1:
            return None
        G.used.add(n)
        g = g + np.float32(b)
    return g if g.ndim == 1 else None


def _match_rmsnorm(G: _Graph, node, what: str):
    """``gamma * cast(x * rsqrt(mean(x**2, -1, keepdim) + eps))`` -> (x, gamma, eps); the gamma
    may be ``1 + w`` (:func:`_gamma_const`)."""
    m = G.expect(node, "mul", what=f"the {what} RMSNorm gamma multiply")
    a, b = m.args[0], m.args[1]
    gamma = _gamma_const(G, a) if hasattr(a, "op") else None
    normed = b
    if gamma is None:
        gamma, normed = (_gamma_const(G, b) if hasattr(b, "op") else None), a
    if gamma is None or gamma.ndim != 1:
        raise _unsupported(m, f"expected the {what} RMSNorm (gamma * normalized x)")
    inner = G.expect(normed, "mul", what=f"the {what} RMSNorm x * rsqrt(...)")
    x, r = inner.args
    if not G.is_call(G.skip(r), "rsqrt"):
        x, r = r, x
    r = G.expect(r, "rsqrt", what=f"the {what} RMSNorm rsqrt")
    add = G.expect(r.args[0], "add", what=f"the {what} RMSNorm mean + eps")
    mean, eps = add.args[0], add.args[1]
    if not isinstance(eps, (int, float)):
        mean, eps = eps, mean
    if not isinstance(eps, (int, float)):
        raise _unsupported(add, f"the {what} RMSNorm eps must be a constant")
    mean = G.expect(mean, "mean", what=f"the {what} RMSNorm mean")
    dims = mean.args[1] if len(mean.args) > 1 else None
    if list(dims or []) not in ([-1], [len(_shape(mean)) - 1]):
        raise _unsupported(mean, f"the {what} RMSNorm mean must be over the last dim")
    pw = G.expect(mean.args[0], "pow", what=f"the {what} RMSNorm x**2")
    if pw.args[1] != 2 or G.skip(pw.args[0]) is not G.skip(x):
        raise _unsupported(pw, f"the {what} RMSNorm must square its own input")
    return G.skip(x), gamma, float(eps)


def _match_heads(G: _Graph, node, what: str):
    """``transpose(view(linear(n), [B, S, heads, hd]), 1, 2)`` -> (n, W, b, heads, hd, norm);
    ``norm`` is ``(gamma, eps)`` of an RMSNorm of each head between the view and the
    transpose (Qwen3's q/k norms), else None."""
    t = G.expect(node, "transpose", what=f"the {what} head transpose")
    if sorted(int(d) % 4 for d in t.args[1:3]) != [1, 2]:
        raise _unsupported(t, f"the {what} heads must be transposed with dims (1, 2)")
    norm, heads_in = None, t.args[0]
    if _is_rmsnorm(G, heads_in):
        heads_in, gamma, eps = _match_rmsnorm(G, heads_in, f"{what} head")
        norm = (np.asarray(gamma, dtype=np.float32), eps)
    v = G.expect(heads_in, "view", "reshape", "_unsafe_view", what=f"the {what} head view")
    shp = _shape(v)
    heads, hd = (_int(shp[2]), _int(shp[3])) if len(shp) == 4 else (None, None)
    if heads is None or hd is None:
        raise _unsupported(v, f"the {what} head view must be [B, S, heads, head_dim]")
    if norm is not None and norm[0].shape != (hd,):
        raise _unsupported(t, f"the {what} head RMSNorm's gamma has {norm[0].size} elements, "
                           f"a head {hd}")
    x, w, b = _match_linear(G, v.args[0], f"the {what} projection")
    return G.skip(x), w, b, heads, hd, norm


def _match_rope(G: _Graph, node, what: str):
    """rotate_half RoPE -> (x before RoPE, cos node, sin node)."""
    outer = G.skip(node)
    whole = _rope_pass_through(G, node, what)
    if whole is not None:
        node = outer.args[0][0]
    add = G.expect(node, "add", what=f"the RoPE of {what} (x*cos + rotate_half(x)*sin)")
    m1, m2 = (G.expect(a, "mul", what=f"the RoPE of {what}") for a in add.args[:2])
    if G.is_call(G.skip(m1.args[0]), "cat") or G.is_call(G.skip(m1.args[1]), "cat"):
        m1, m2 = m2, m1
    x, cos = m1.args
    rot, sin = m2.args
    if G.is_call(G.skip(sin), "cat"):
        rot, sin = sin, rot
    if G.is_call(G.skip(cos), "transpose"):
        x, cos = cos, x
    cat = G.expect(rot, "cat", what=f"the rotate_half of {what}")
    parts = cat.args[0]
    if len(parts) != 2:
        raise _unsupported(cat, f"the rotate_half of {what} must concatenate two halves")
    neg = G.expect(parts[0], "neg", what=f"the rotate_half of {what} (-x2)")
    hi = G.expect(neg.args[0], "slice", what=f"the rotate_half of {what} (x2)")
    lo = G.expect(parts[1], "slice", what=f"the rotate_half of {what} (x1)")
    xs = G.skip(x)
    hd = _int(_shape(xs)[-1]) if _shape(xs) else None
    for s, (start, end) in ((lo, (0, hd // 2 if hd else None)), (hi, (hd // 2 if hd else None,
                                                                      None))):
        dim = _int(s.args[1]) if len(s.args) > 1 else 0
        sstart = _int(s.args[2]) if len(s.args) > 2 else 0
        send = _int(s.args[3]) if len(s.args) > 3 else None
        if G.skip(s.args[0]) is not xs or dim % 4 != 3 or sstart != start or (
                end is not None and send != end) or (
                end is None and send is not None and send < hd):
            raise _unsupported(s, f"the rotate_half of {what} must split the head in halves")
    if whole is not None and whole is not xs:
        raise _unsupported(outer, f"the RoPE of {what} and its pass-through must read the "
                           "same heads")
    return xs, cos, sin


def _rope_pass_through(G: _Graph, node, what: str):
    """The heads ``x`` of ``cat([rope, slice(x, -1, r, end)], -1)`` when the slice is empty
    (``r`` = head_dim: a partial-rotary model's code with every dim rotated, as Phi-3's);
    None when ``node`` is no such ``cat``. A partial rotary (``r`` < head_dim) is refused."""
    n = G.skip(node)
    if not G.is_call(n, "cat") or len(n.args[0]) != 2 or \
            not G.is_call(G.skip(n.args[0][1]), "slice"):
        return None
    s = G.expect(n.args[0][1], "slice", what=f"the RoPE pass-through of {what}")
    x = G.skip(s.args[0])
    hd = _int(_shape(x)[-1]) if len(_shape(x)) == 4 else None
    dims = (_int(n.args[1] if len(n.args) > 1 else 0), _int(s.args[1] if len(s.args) > 1 else 0))
    r = _int(s.args[2]) if len(s.args) > 2 else None
    if hd is None or None in dims or any(d % 4 != 3 for d in dims) or r is None or r < 0:
        raise _unsupported(n, f"expected the RoPE of {what} and a pass-through of the rest of "
                           "each head, along the head dim")
    if r < hd:
        raise _unsupported(n, f"partial rotary embedding: only {r} of the {hd} dims of each "
                           f"{what} head are rotated (partial_rotary_factor {r / hd:g}); the "
                           "ROPE unit rotates whole heads (factor 1.0)")
    G.used.add(n)
    return x


def _match_repeat_kv(G: _Graph, node):
    """``reshape(expand(unsqueeze(x, 2), ...), ...)`` (repeat_kv) or x itself."""
    n = G.skip(node)
    if G.is_call(n, "reshape", "view", "_unsafe_view"):
        e = G.skip(n.args[0])
        if G.is_call(e, "expand"):
            u = G.expect(e.args[0], "unsqueeze", what="repeat_kv's unsqueeze")
            if _int(u.args[1]) != 2:
                raise _unsupported(u, "repeat_kv must unsqueeze dim 2")
            G.used.update({n, e})
            return G.skip(u.args[0])
    return n


def _scalar(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _match_softcap(G: _Graph, node):
    """``mul(tanh(div(x, c)), c)`` (Gemma 2's soft-capping ``c * tanh(x / c)``) -> (x, c);
    anything else -> (node, 0.0), nothing marked used."""
    m = G.skip(node)
    if not G.is_call(m, "mul") or len(m.args) != 2:
        return node, 0.0
    t, c = m.args
    if _scalar(c) is None:
        t, c = c, t
    t = G.skip(t)
    if _scalar(c) is None or not G.is_call(t, "tanh"):
        return node, 0.0
    c = _scalar(c)
    d = G.skip(t.args[0])
    if G.is_call(d, "div") and _scalar(d.args[1]) == c:
        inner = d.args[0]
    elif G.is_call(d, "mul") and _scalar(d.args[1]) is not None and \
            abs(_scalar(d.args[1]) * c - 1.0) <= 1e-6:
        inner = d.args[0]
    else:
        raise _unsupported(t, "expected a soft-cap c * tanh(x / c) with one constant c")
    if not c > 0:
        raise _unsupported(t, f"soft-cap {c}: must be positive")
    G.used.update({m, t, d})
    return inner, c


def _eager_attention(G: _Graph, mm) -> dict:
    """``matmul(softmax(scores + mask, -1), v)`` (``transformers``' eager attention), ``scores
    = [cap * tanh(s / cap) of] matmul(q, transpose(k, 2, 3)) * scale`` -> the
    ``scaled_dot_product_attention`` arguments (``query``, ``key``, ``value``, ``scale``,
    ``is_causal``) and ``softcap`` (0.0: none). The mask is not inspected (module docstring)."""
    probs, v = mm.args[:2]
    sm = G.expect(probs, "softmax", "_softmax", what="the attention softmax")
    if _int(sm.args[1]) not in (-1, len(_shape(sm)) - 1):
        raise _unsupported(sm, "the attention softmax must be over the keys (last dim)")
    add = G.expect(sm.args[0], "add", what="the attention scores + mask")
    scores, mask = add.args[:2]
    if G.skip(scores) not in G.path:
        scores, mask = mask, scores
    scores, cap = _match_softcap(G, scores)
    sc = G.skip(scores)
    scale = 1.0
    if G.is_call(sc, "mul", "div") and _scalar(sc.args[1]) is not None:
        f = _scalar(sc.args[1])
        scale = f if _opname(sc) == "mul" else 1.0 / f
        G.used.add(sc)
        sc = G.skip(sc.args[0])
    qk = G.expect(sc, "matmul", what="the attention scores matmul(q, k^T)")
    kt = G.expect(qk.args[1], "transpose", what="the attention's k^T")
    if sorted(int(d) % 4 for d in kt.args[1:3]) != [2, 3]:
        raise _unsupported(kt, "the attention's k must be transposed with dims (2, 3)")
    return dict(query=qk.args[0], key=kt.args[0], value=v, scale=scale, is_causal=True,
                softcap=cap)


def _match_attention(G: _Graph, node):
    """o_proj input -> attention parts (see the module docstring)."""
    r = G.skip(node)
    chain = []
    while G.is_call(r, "reshape", "view", "_unsafe_view", "transpose"):
        if _opname(r) == "transpose" and sorted(int(d) % 4 for d in r.args[1:3]) != [1, 2]:
            raise _unsupported(r, "the attention output must be transposed with dims (1, 2)")
        chain.append(r)
        G.used.add(r)
        r = G.skip(r.args[0])
    if G.is_call(r, "matmul"):      # transformers' eager attention (Gemma 2's soft-capping)
        sdpa = G.expect(r, "matmul", what="the attention's probabilities @ v")
        kw = _eager_attention(G, sdpa)
    else:
        sdpa = G.expect(r, "scaled_dot_product_attention", what="scaled_dot_product_attention "
                        "(or the eager attention's matmul) feeding o_proj")
        kw = dict(sdpa.kwargs)
        names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                 "enable_gqa"]
        for i, a in enumerate(sdpa.args):
            kw[names[i]] = a
    if sum(1 for c in chain if _opname(c) == "transpose") != 1:
        raise _unsupported(sdpa, "the attention output must be transposed back to [B, S, H*hd]")
    if kw.get("dropout_p", 0.0):
        raise _unsupported(sdpa, "attention dropout must be 0 (export in eval mode)")
    if kw.get("attn_mask") is None and not kw.get("is_causal", False):
        raise _unsupported(sdpa, "attention must be causal (a mask or is_causal=True)")
    q_rot, cq, sq = _match_rope(G, kw["query"], "q")
    k_rot_node = _match_repeat_kv(G, kw["key"])
    k_pre, ck, sk = _match_rope(G, k_rot_node, "k")
    v_pre = _match_repeat_kv(G, kw["value"])
    xq, wq, bq, heads, hd, nq = _match_heads(G, q_rot, "q")
    xk, wk, bk, kv_heads, hdk, nk = _match_heads(G, k_pre, "k")
    xv, wv, bv, kv_heads_v, hdv, nv = _match_heads(G, v_pre, "v")
    if not (xq is xk is xv):
        raise _unsupported(sdpa, "q, k and v must read the same normalized input")
    if (nq is None) != (nk is None) or nv is not None:
        raise _unsupported(sdpa, "head RMSNorms must be on q and k both (Qwen3), not on v")
    if not (hd == hdk == hdv) or kv_heads != kv_heads_v or heads % kv_heads:
        raise _unsupported(sdpa, f"inconsistent heads (q {heads}x{hd}, k {kv_heads}x{hdk}, "
                           f"v {kv_heads_v}x{hdv})")
    scale = kw.get("scale")
    # 0.0: the default 1/sqrt(head_dim) (DecoderShape.attn_scale)
    scale = 0.0 if scale is None or abs(float(scale) * math.sqrt(hd) - 1.0) <= 1e-6 else \
        float(scale)
    return dict(x=xq, q=(wq, bq), k=(wk, bk), v=(wv, bv), heads=heads, kv_heads=kv_heads,
                hd=hd, rope=(cq, sq, ck, sk), node=sdpa, head_norms=(nq, nk) if nq else None,
                scale=scale, softcap=float(kw.get("softcap", 0.0)))


def _is_rmsnorm(G: _Graph, node) -> bool:
    """Whether ``node`` looks like an RMSNorm output (a multiply by a 1-D constant gamma)."""
    n = G.skip(node)
    if not G.is_call(n, "mul"):
        return False
    return any(hasattr(a, "op") and _gamma_const(G, a) is not None for a in n.args[:2])


def _match_act(G: _Graph, node):
    """``silu(g)`` -> (g, "silu"); ``square(relu(g))`` or ``pow(relu(g), 2)`` -> (g, "relu2");
    ``gelu(g, approximate="tanh")`` -> (g, "gelu_tanh"); None otherwise (nothing marked
    used)."""
    s = G.skip(node)
    if G.is_call(s, "silu"):
        G.used.add(s)
        return s.args[0], "silu"
    if G.is_call(s, "gelu"):
        approx = s.kwargs.get("approximate", s.args[1] if len(s.args) > 1 else "none")
        if approx != "tanh":
            raise _unsupported(s, f"GELU with approximate='{approx}': the vector unit's gate "
                               "ROMs are SiLU, squared ReLU and GELU-tanh "
                               "(gelu_pytorch_tanh)")
        G.used.add(s)
        return s.args[0], "gelu_tanh"
    if G.is_call(s, "square", "pow") and (_opname(s) == "square" or s.args[1] == 2):
        r = G.skip(s.args[0])
        if G.is_call(r, "relu"):
            G.used.update({s, r})
            return r.args[0], "relu2"
    return None


def _match_mlp(G: _Graph, node):
    """``down([sub_norm](act(gate(n)) * up(n)))`` -> (n, gate, up, down, act, sub-norm gamma
    or None, sub-norm eps or None); ``act``: SiLU (SwiGLU) or squared ReLU (BitNet)."""
    h, wd, bd = _match_linear(G, node, "the MLP down projection")
    g_sub = eps_sub = None
    if _is_rmsnorm(G, h):
        h, g_sub, eps_sub = _match_rmsnorm(G, h, "MLP sub-")
    m = G.expect(h, "mul", what="the gated product act(gate) * up")
    a, b = m.args
    got = _match_act(G, a)
    if got is None:
        a, b = b, a
        got = _match_act(G, a)
    if got is None:
        s = G.skip(a)
        bad = s if getattr(s, "op", None) == "call_function" else m
        raise _unsupported(bad, "expected silu(gate) of a SwiGLU MLP, relu(gate)**2 of a "
                           "BitNet MLP or gelu_tanh(gate) of a Gemma MLP")
    gate_in, act = got
    xg, wg, bg = _match_linear(G, gate_in, "the MLP gate projection")
    xu, wu, bu = _match_linear(G, b, "the MLP up projection")
    if G.skip(xg) is not G.skip(xu):
        raise _unsupported(m, "gate and up must read the same normalized input")
    if any(v is not None for v in (bd, bg, bu)):
        raise _unsupported(m, "MLP biases are not supported")
    return G.skip(xg), wg, wu, wd, act, g_sub, eps_sub


def _split_residual(G: _Graph, add, is_branch):
    """``add(x, branch)`` in either order -> (x, branch)."""
    a, b = add.args[0], add.args[1]
    if is_branch(b):
        return a, b
    if is_branch(a):
        return b, a
    raise _unsupported(add, "expected a residual add of a linear's output")


def _match_layer(G: _Graph, node, fold_gammas: bool = True):
    """The residual stream after one decoder block -> (stream before it, block parts).

    ``fold_gammas``: fold every RMSNorm gamma of the block into the linears reading the norm
    (LLaMA), or keep them unfolded in the ``*_gamma`` fields (BitNet, ternary compiles).
    """
    def branch(v):      # a linear's output, or (Gemma 2) the post-norm of one
        return G.is_call(G.skip(v), "linear") or _is_rmsnorm(G, v)

    def post_norm(v, what):
        if G.is_call(G.skip(v), "linear"):
            return v, None, None
        return _match_rmsnorm(G, v, what)

    add2 = G.expect(node, "add", what="the MLP residual add")
    x1, mlp_out = _split_residual(G, add2, branch)
    mlp_out, g_pm, eps_pm = post_norm(mlp_out, "post-feedforward")
    n2, wg, wu, wd, act, g_ms, eps_ms = _match_mlp(G, mlp_out)
    r, g2, eps2 = _match_rmsnorm(G, n2, "post-attention")
    if r is not G.skip(x1):
        raise _unsupported(add2, "the MLP norm must read the residual stream")
    add1 = G.expect(x1, "add", what="the attention residual add")
    x0, attn_out = _split_residual(G, add1, branch)
    attn_out, g_pa, eps_pa = post_norm(attn_out, "post-attention")
    a, wo, bo = _match_linear(G, attn_out, "the attention output projection")
    g_as = eps_as = None
    if _is_rmsnorm(G, a):
        a, g_as, eps_as = _match_rmsnorm(G, a, "attention sub-")
    at = _match_attention(G, a)
    xin, g1, eps1 = _match_rmsnorm(G, at["x"], "input")
    if xin is not G.skip(x0):
        raise _unsupported(add1, "the attention norm must read the residual stream")
    hn = at["head_norms"]
    for e in (eps2, eps_as, eps_ms, eps_pa, eps_pm) + ((hn[0][1], hn[1][1]) if hn else ()):
        if e is not None and abs(eps1 - e) > 1e-12 * max(abs(eps1), 1.0):
            raise _unsupported(add2, f"RMSNorm eps differ inside a block ({eps1} vs {e})")

    def fold(w, g):
        w = np.asarray(w, dtype=np.float32)
        return (w * g[None, :]).astype(np.float32, copy=False) if fold_gammas and \
            g is not None else w

    def kept(g):
        return None if fold_gammas or g is None else np.asarray(g, dtype=np.float32)

    (wq, bq), (wk, bk), (wv, bv) = at["q"], at["k"], at["v"]
    layer = FloatLayer(q=fold(wq, g1), k=fold(wk, g1), v=fold(wv, g1),
                       o=fold(wo, g_as), gate=fold(wg, g2), up=fold(wu, g2),
                       down=fold(wd, g_ms), q_bias=bq, k_bias=bk, v_bias=bv,
                       o_bias=bo, act=act, attn_sub_norm=g_as is not None,
                       mlp_sub_norm=g_ms is not None, attn_gamma=kept(g1),
                       attn_sub_gamma=kept(g_as), mlp_gamma=kept(g2),
                       mlp_sub_gamma=kept(g_ms), q_norm=hn[0][0] if hn else None,
                       k_norm=hn[1][0] if hn else None,
                       post_attn_gamma=None if g_pa is None else np.asarray(g_pa, np.float32),
                       post_mlp_gamma=None if g_pm is None else np.asarray(g_pm, np.float32))
    return xin, layer, at, eps1


# --------------------------------------------------------------------------- RoPE constants

def _upstream_consts(G: _Graph, node, seen=None) -> tuple[list, list]:
    """Constants and scalar-mul factors upstream of a cos/sin node, across HOP submodules.

    Returns (constant arrays, scalar factors multiplying a cos/sin).
    """
    consts, factors = [], []
    stack, seen = [(node, None)], set() if seen is None else seen
    while stack:
        n, hop = stack.pop()
        if id(n) in seen or not hasattr(n, "op"):
            continue
        seen.add(id(n))
        if n.op == "placeholder":
            if hop is not None:  # a HOP submodule input: continue at the operand outside
                sub_phs = [p for p in n.graph.nodes if p.op == "placeholder"]
                operands = [a for a in hop.args if hasattr(a, "op") and a.op != "get_attr"]
                idx = sub_phs.index(n)
                if idx < len(operands):
                    stack.append((operands[idx], None))
                continue
            c = G.const(n)
            if c is not None:
                consts.append(c)
            continue
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "getitem":
            src, i = n.args
            sub = _hop_submodule(G, src)
            if sub is not None:
                out = next(o for o in sub.graph.nodes if o.op == "output")
                stack.append((out.args[0][i], src))
                continue
        if n.op == "call_function" and _opname(n) == "mul":
            others = [a for a in n.args if isinstance(a, (int, float))]
            if others and any(hasattr(a, "op") and _opname(a) in ("cos", "sin")
                              for a in n.args if hasattr(a, "op") and a.op == "call_function"):
                factors.append(float(others[0]))
        for a in list(n.args) + list(n.kwargs.values()):
            for v in (a if isinstance(a, (list, tuple)) else [a]):
                if hasattr(v, "op"):
                    stack.append((v, hop))
    return consts, factors


def _hop_submodule(G: _Graph, hop):
    """The GraphModule called by a higher-order-op node (wrap_with_set_grad_enabled, ...)."""
    if getattr(hop, "op", None) != "call_function":
        return None
    for a in hop.args:
        if getattr(a, "op", None) == "get_attr":
            sub = getattr(G.ep.graph_module, a.target, None)
            if isinstance(sub, torch.fx.GraphModule):
                return sub
    return None


def _rope_params(G: _Graph, cos_node, hd: int, rope_type: str | None):
    """``(theta, attention_scaling, inv_freq)`` from the inv_freq constant behind cos/sin:
    ``inv_freq`` is the constant itself (the model's own frequencies: llama3, linear, YaRN,
    ...) where it is not the default RoPE's ``theta**(-2i/head_dim)`` of the fitted theta, and
    ``()`` where it is (the table is then computed from theta, in float64, as before)."""
    consts, factors = _upstream_consts(G, cos_node)
    half = hd // 2
    cands = [c for c in consts if c.ndim == 1 and c.shape[0] == half]
    variant = f"rope_type '{rope_type}'" if rope_type else "RoPE variant"
    where = getattr(cos_node, "name", "cos")
    if not cands or half < 2:
        raise UnsupportedOpError(f"unsupported {variant} (node {where}): cos/sin are not "
                                 "computed from an inv_freq constant of head_dim/2 entries")
    inv = cands[0].astype(np.float64)
    if not (np.all(np.isfinite(inv)) and np.all(inv > 0) and inv[1] < 1):
        raise UnsupportedOpError(f"unsupported {variant} (node {where}): the inv_freq constant "
                                 "is not a set of rotary frequencies (positive, finite, "
                                 "inv_freq[1] < 1)")
    # inv[i] = theta**(-2i/hd): fit log(theta) over every entry. From inv[1] alone the float32
    # rounding of inv (~6e-8) grows by hd/2 (4e-6 at head_dim 128, past the snap below); the
    # fit weights the entries with the largest exponents most, whose error is not amplified.
    e = np.arange(1, half, dtype=np.float64) * 2 / hd
    theta = float(np.exp(-np.sum(e * np.log(inv[1:])) / np.sum(e * e)))
    # inv_freq is float32: theta comes back with ~1e-7 relative noise (9999.99987 for 1e4);
    # configs use round numbers, so snap to the nearest integer when it is that close.
    if theta >= 1 and abs(round(theta) - theta) <= 1e-6 * theta:
        theta = float(round(theta))
    ref = 1.0 / theta ** (np.arange(half, dtype=np.float64) * 2 / hd)
    rel = np.max(np.abs(inv - ref) / ref)
    scaling = factors[0] if factors else 1.0
    if len(set(factors)) > 1:
        raise UnsupportedOpError(f"unsupported {variant} (node {where}): cos and sin are "
                                 f"scaled differently ({sorted(set(factors))})")
    if not 0 < abs(scaling) < 2:
        raise UnsupportedOpError(f"unsupported {variant} (node {where}): cos and sin scaled by "
                                 f"{scaling:.6g}; the Q1.14 RoPE table holds |scale| < 2")
    return theta, scaling, (() if rel <= 1e-6 else tuple(inv))


# ----------------------------------------------------------------------------- the program

def _hidden_path(G: _Graph, start) -> list:
    """Nodes that (transitively) consume the embedding output, in graph order."""
    reach = {start}
    order = []
    for n in G.g.nodes:
        if n is start:
            order.append(n)
            continue
        if n.op != "call_function" and n.op != "output":
            continue
        ins = [v for a in list(n.args) + list(n.kwargs.values())
               for v in (a if isinstance(a, (list, tuple)) else [a]) if hasattr(v, "op")]
        if any(v in reach for v in ins):
            if n.op == "call_function" and _opname(n) in _SIDE_OPS:
                continue  # a size or a metadata assertion: not a tensor on the path
            reach.add(n)
            order.append(n)
    return order


def decoder_from_exported_program(ep, name: str = "model", source: str = "",
                                  max_context: int | None = None,
                                  max_position: int | None = None, family: str = "llama",
                                  rope_type: str | None = None,
                                  rope_theta: float | None = None,
                                  check_model=None,
                                  fold_gammas: bool | None = None,
                                  windows: tuple = ()) -> FloatDecoder:
    """Recognise a LLaMA-family decoder in an ``ExportedProgram`` (see the module docstring).

    Parameters
    ----------
    ep : torch.export.ExportedProgram
        ``input_ids [1, S]`` (int64) -> logits (tensor, tuple or HF output with ``logits``).
    name, source, family : str
        Recorded in the result.
    max_context : int, optional
        Largest context; default ``min(max_position, 2048)``.
    max_position : int, optional
        Model's position limit; default the exported sequence bound if finite, else
        ``max_context``, else 2048.
    rope_type : str, optional
        Named in RoPE errors, recorded in the shape.
    rope_theta : float, optional
        The config's theta, recorded where the frequencies are not the default RoPE's (which
        the fitted theta names exactly).
    check_model : callable, optional
        The eager model to check against; default ``ep.module()``.
    fold_gammas : bool, optional
        Fold the block RMSNorm gammas into the linears (see :func:`load_decoder`); default:
        fold unless ``family`` is ``"bitnet"``.
    windows : tuple of int, optional
        Per layer sliding attention window (``DecoderShape.windows``; from the config, as
        the graph's mask is not inspected); default full causal attention everywhere.

    Returns
    -------
    FloatDecoder
    """
    if fold_gammas is None:
        fold_gammas = family != "bitnet"
    check_finite(program_tensors(ep), source or name)
    G = _Graph(ep)
    emb_nodes = [n for n in G.g.nodes if n.op == "call_function" and _opname(n) == "embedding"]
    if len(emb_nodes) != 1:
        raise FrontendError(f"{source or name}: expected one aten.embedding in the graph, found "
                            f"{len(emb_nodes)}; not a decoder-only language model")
    emb = emb_nodes[0]
    embed = G.const(emb.args[0])
    ids_node = emb.args[1]
    if embed is None or getattr(ids_node, "op", None) != "placeholder" or \
            ids_node not in G.user_inputs:
        raise _unsupported(emb, "the embedding must read a constant table with the input ids")
    G.used.add(emb)

    # Coverage first: the first op on the hidden path outside the patterns is the error.
    path = _hidden_path(G, emb)
    G.path = set(path)
    for n in path:
        if n.op == "call_function" and _opname(n) not in _PATH_OPS:
            raise _unsupported(n, "not part of a recognised LLaMA block (embedding, RMSNorm, "
                               "RoPE, GQA attention, SwiGLU MLP, residual add, lm_head)")

    out_node = next(n for n in G.g.nodes if n.op == "output")
    outs = out_node.args[0]
    logits = outs[0] if isinstance(outs, (list, tuple)) else outs
    logits, final_cap = _match_softcap(G, logits)
    xf, w_lm, b_lm = _match_linear(G, logits, "the lm_head projection")
    if b_lm is not None:
        raise _unsupported(G.skip(logits), "an lm_head bias is not supported")
    x, g_final, eps = _match_rmsnorm(G, xf, "final")

    start, embed_scale = _embedding_scale(G, emb)
    layers, attn = [], []
    while x is not start:
        if len(layers) > 100000:
            break
        x, layer, at, eps_l = _match_layer(G, x, fold_gammas)
        if abs(eps_l - eps) > 1e-12 * max(abs(eps), 1.0):
            raise _unsupported(at["node"], f"RMSNorm eps differ between blocks ({eps_l} vs "
                               f"{eps})")
        layers.append(layer)
        attn.append(at)
    layers.reverse()
    attn.reverse()
    if not layers:
        raise FrontendError(f"{source or name}: no decoder block between the embedding and "
                            "the lm_head")

    # Everything on the hidden path must belong to a recognised block.
    for n in path:
        if n.op == "call_function" and n not in G.used:
            raise _unsupported(n, "not part of a recognised LLaMA block")

    a0 = attn[0]
    heads, kv_heads, hd = a0["heads"], a0["kv_heads"], a0["hd"]
    for i, at in enumerate(attn):
        if (at["heads"], at["kv_heads"], at["hd"]) != (heads, kv_heads, hd):
            raise _unsupported(at["node"], f"block {i} has different head numbers")
        if (at["scale"], at["softcap"]) != (a0["scale"], a0["softcap"]):
            raise _unsupported(at["node"], f"block {i} has a different attention scale or "
                               "soft-cap")
    theta, scaling, inv = _rope_params(G, a0["rope"][0], hd, rope_type)
    for at in attn:
        for cs in at["rope"]:
            t2, s2, inv2 = _rope_params(G, cs, hd, rope_type)
            if abs(t2 - theta) > 1e-6 * theta or abs(s2 - scaling) > 1e-9 or inv2 != inv:
                raise _unsupported(at["node"], "blocks use different RoPE parameters")
    if inv and rope_theta is not None:
        theta = float(rope_theta)      # the fit names no theta of rescaled frequencies

    if max_position is None:
        # An archive records no position limit: take the exported length bound, else the
        # context asked for (RoPE itself has no limit).
        max_position = _export_seq_bound(G, ids_node) or max_context or DEFAULT_MAX_CONTEXT
    max_context = _check_max_context(max_context, max_position, source or name)
    inter = layers[0].gate.shape[0]
    shape = DecoderShape(vocab=embed.shape[0], hidden=embed.shape[1], layers=len(layers),
                         heads=heads, kv_heads=kv_heads, head_dim=hd, intermediate=inter,
                         max_position=int(max_position), rope_theta=theta, rms_eps=eps,
                         rope_scaling=float(scaling), rope_inv_freq=inv,
                         rope_type=rope_type or ("custom" if inv else "default"),
                         windows=windows, embed_scale=embed_scale, attn_scale=a0["scale"],
                         attn_softcap=a0["softcap"], final_softcap=final_cap)
    # embed: G.const's float32 view (no second 1 GB table); the products are float32 already
    fd = FloatDecoder(name=name, shape=shape, embed=np.asarray(embed, dtype=np.float32),
                      layers=layers,
                      lm_head=(w_lm * g_final[None, :]).astype(np.float32, copy=False),
                      source=source,
                      family=family, max_context=max_context)
    _check_numerics(fd, ep, ids_node, check_model, source or name)
    return fd


def _embedding_scale(G: _Graph, emb):
    """(start of the residual stream, embedding scale): ``mul(embedding, c)`` with a scalar
    constant ``c`` (Gemma's ``sqrt(hidden)`` normalizer) -> (the mul, c); else (emb, 1.0)."""
    users = [u for u in emb.users if u.op == "call_function" and _opname(u) not in _SIDE_OPS]
    if len(users) != 1 or not G.is_call(users[0], "mul") or len(users[0].args) != 2:
        return emb, 1.0
    m = users[0]
    other = m.args[1] if m.args[0] is emb else m.args[0]
    c = _scalar(other)
    if c is None and hasattr(other, "op"):
        v = G.const(other)
        c = float(v.reshape(())) if v is not None and v.size == 1 else None
    if c is None:
        return emb, 1.0
    G.used.add(m)
    return m, c


def _export_seq_bound(G: _Graph, ids_node) -> int | None:
    shp = _shape(ids_node)
    if len(shp) != 2:
        return None
    s = shp[1]
    if _int(s) is not None and not hasattr(s, "node"):
        return None  # static export: its length says nothing about the model's limit
    try:
        vr = G.ep.range_constraints.get(s.node.expr)
        upper = int(vr.upper) if vr is not None else None
    except Exception:  # noqa: BLE001 -- unbounded (int_oo) or unknown
        return None
    return upper if upper and upper < 2**31 else None


def _check_numerics(fd: FloatDecoder, ep, ids_node, model, where: str) -> None:
    """The recognised decoder must reproduce the model's logits (catches unseen variants)."""
    from .llm_interpret import float_forward

    shp = _shape(ids_node)
    n = _int(shp[1]) if len(shp) == 2 and _int(shp[1]) is not None and not hasattr(
        shp[1], "node") else EXAMPLE_TOKENS
    ids = _example_ids(fd.shape.vocab, n)
    with torch.no_grad():
        try:
            if model is not None:
                out = model(ids, use_cache=False)
            else:
                mod = ep.module()
                try:
                    out = mod(ids)
                except Exception:  # noqa: BLE001 -- exported with a use_cache kwarg
                    out = mod(ids, use_cache=False)
        except Exception as e:  # noqa: BLE001
            raise FrontendError(f"{where}: cannot run the model to check the recognised "
                                f"decoder ({type(e).__name__}: {_first_line(e)[:120]})") from None
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (list, tuple)):
        out = out[0]
    ref = out.detach().to(torch.float64).numpy().reshape(n, -1)
    got = float_forward(fd, ids[0].tolist())
    err = float(np.max(np.abs(got - ref)))
    tol = 1e-3 * max(1.0, float(np.max(np.abs(ref))))
    if not err <= tol:
        raise UnsupportedOpError(f"{where}: the recognised LLaMA blocks do not reproduce the "
                                 f"model's logits (max |diff| {err:.3g} > {tol:.3g}); the model "
                                 "uses a variant the recogniser does not see (attention mask, "
                                 "scaling, ...)")
