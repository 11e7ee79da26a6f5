"""``hwflow compile`` / ``hwflow sim`` for LLaMA-family decoders.

The compile is :data:`DECODER_STEPS`, each a small function of a :class:`DecoderJob`:

1. ``load``       Hugging Face folder or torch.export archive -> FloatDecoder (pattern recogniser;
                  a folder's blocks are recognised as step 3 reads them)
2. ``configure``  board -> accelerator configuration (must have the transformer units), fit;
                  the KV cache of ``--max-context`` against the board's memory
3. ``quantize``   FloatDecoder -> QDecoder (static scales from a seeded calibration run), a block
                  at a time, each float block written to ``decoder/float`` as it is read
4. ``size``       the TLMM engine (ternary decoders), buffers and ring placement for the model
5. ``check``      golden (integer) decoder against the float one
6. ``lower``      QDecoder -> one decode program, prefill bucket programs, memory image
7. ``rtl``        Amaranth -> Verilog of the configuration
8. ``report``     reports/compile.json

then the build folder is written, atomically. ``--shape-only`` runs :data:`SHAPE_STEPS`: the
same ``configure`` on the shapes of a ``transformers`` config (``load``), then ``lower``,
``predict`` and ``report`` (no weights, no RTL); the cycle-model calibration runs ``load,
quantize, lower`` of :data:`DECODER_STEPS` on engines of its own.

Simulation runs the prompt (prefill buckets, chunked at POS = 0, B, 2B, ...) and K greedy decode
steps on the RTL in one Verilator process, the RTL's own argmax feeding the next step; each step's
logits are compared byte for byte with the golden interpreter and the ISA functional model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np

from hwflow.boards import load_board
from hwflow.buildfolder import (
    BuildOutput,
    compile_command,
    open_build,
    write_build,
    write_json,
)
from hwflow.compiler.decoder import DECODER_WEIGHTS, LM_HEAD_WEIGHTS, lm_head_weights
from hwflow.compiler.decoder_io import (
    FloatDecoderWriter,
    load_saved_decoder,
    open_saved_decoder,
    save_decoder,
)
from hwflow.errors import HwflowError
from hwflow.mapping.accel_config import check_fit, choose_config
from hwflow.mapping.cycles import memory_rate_bytes
from hwflow.mapping.llm_lower import kv_cache_bytes
from hwflow.rtl_cache import check_cache_writable
from hwflow.steps import run_steps

__all__ = ["compile_decoder", "compile_shape_only", "predict_build", "parse_prompt",
           "default_prompt", "golden_rows"]

DEFAULT_NEW_TOKENS = 8
DEFAULT_PROMPT_LEN = 8


# -- compile ---------------------------------------------------------------------------------

def _load(model, example, trust_model, max_context, td: Path, stream: bool = False):
    """The float model, a decoder or a Mamba (``compiler.lm.open_model``; ``example``:
    written into ``td`` first); ``stream``: a decoder's blocks recognised as they are read
    (``td`` must then outlive the reading), else all of them now."""
    from hwflow.compiler.errors import CompileError
    from hwflow.compiler.lm import open_model

    if example is not None:
        from hwflow.llm_examples import write_example

        model = write_example(example, td / example)
    try:
        return open_model(model, trust_model=trust_model, max_context=max_context,
                          stream=stream)
    except CompileError as e:
        raise HwflowError(str(e)) from None


def _check_weights(weights, lm_head) -> None:
    """``--weights`` and ``--lm-head`` are formats a decoder takes (one line if not)."""
    if weights not in (None, *DECODER_WEIGHTS):
        raise HwflowError(f"--weights {weights}: a decoder takes {', '.join(DECODER_WEIGHTS)}")
    if lm_head not in (None, *LM_HEAD_WEIGHTS):
        raise HwflowError(f"--lm-head {lm_head}: the LM head takes "
                          f"{', '.join(LM_HEAD_WEIGHTS)}")


def compile_decoder(model=None, example=None, board="u280", out=None, max_context=None,
                    trust_model=False, boards_dir=None, weights=None, config_overrides=None,
                    lm_head=None):
    """Compile a LLaMA-family or BitNet decoder (Hugging Face folder or torch.export archive)
    or a Mamba (Hugging Face folder) into a build folder: :data:`DECODER_STEPS`, then the
    folder; returns ``(out_path, report)``. A Mamba runs the same steps (``compiler.lm``
    answers for either family): int8 or int4 weights with LightMamba's rotations
    (``compiler.ssm_quant``), the state-space units sized for it (``size``).

    ``weights``: ``"int8"``, ``"int4"``, ``"mixed"`` or ``"ternary"`` block linears
    (``compiler.llm_quant``); default ternary for BitNet models, int8 otherwise. Ternary layers
    run on the TLMM engine, which is then built into the accelerator (``T``, ``Q`` from the
    board YAML or sized by ``mapping.accel_config.size_tlmm``); the report's ``tlmm`` says which and
    why. ``config_overrides`` (engine sizes and flags, as the board YAML's ``engine:`` takes
    them) replace the board's engine (``hwflow dse --verify`` builds its points with them).
    ``lm_head`` (``"int8"``, ``"int4"``) sets the LM head's weights apart from ``weights``.

    The output folder is claimed (``buildfolder.BuildOutput``) before the model is read, and a
    memory image larger than the board's memory is refused
    (``mapping.memory_image.check_image``).
    """
    from hwflow.mapping.memory_image import check_image

    _check_weights(weights, lm_head)
    brd = load_board(board, boards_dir)
    out = Path(out) if out else Path("build") / f"{example or _source_name(model)}-{brd.name}"
    rebuild = None if config_overrides else compile_command(
        *([model] if example is None else ["--example", example]), board=brd.name,
        max_context=max_context, trust_model=trust_model, weights=weights, lm_head=lm_head,
        boards_dir=boards_dir)
    if config_overrides:    # hwflow dse --verify: the sweep point's engine, not the board's
        brd = dataclasses.replace(brd, engine={**brd.engine, **config_overrides})
    with BuildOutput(out, rebuild) as claim:
        check_cache_writable()          # before the work: the Verilog goes through the cache
        job = DecoderJob(board=brd, model=model, example=example, max_context=max_context,
                         trust_model=trust_model, weights=weights, lm_head=lm_head,
                         stage=claim.tmp)
        d = run_steps(job, DECODER_STEPS)
        check_image(d.lw.image, d.board, d.cfg)
        # in two updates: image + verilog would copy the image (1.5 GB for Llama-3.2-1B)
        digest = hashlib.sha256(d.lw.image)
        digest.update(d.verilog.encode())
        digest = digest.hexdigest()[:16]
        with claim.writing({"kind": "decoder", "digest": digest}) as tmp:
            write_build(tmp, decoder_files(d))
    return out, d.report


def _source_name(model) -> str:
    """The model's name as the frontend gives it (folder name or file stem, ``\\W`` -> ``_``),
    known before the model is read, for the default output folder."""
    p = Path(model)
    return re.sub(r"\W", "_", p.name if p.is_dir() else p.stem) or "model"


def check_context_fits(shape, max_context: int, brd) -> None:
    """Refuse a ``--max-context`` whose KV cache alone exceeds the board's memory, before the
    RoPE table and the cache (``max_context`` rows each) are built: a context of 10^9 would
    otherwise allocate terabytes on the host first."""
    kv = kv_cache_bytes(shape, max_context)
    if kv > brd.capacity_bytes:
        raise HwflowError(f"--max-context {max_context}: the KV cache alone needs {kv / 1e9:,.1f} "
                          f"GB ({shape.layers} layers x K and V x {max_context} positions x "
                          f"{shape.kv_heads * shape.head_dim} bytes), the {brd.name} has "
                          f"{brd.capacity_bytes / 1e9:,.1f} GB of memory; give a smaller "
                          "--max-context")


@dataclasses.dataclass
class DecoderJob:
    """One decoder compile: what the steps read (the request) and make, in step order.

    ``hwflow compile`` runs every step of :data:`DECODER_STEPS`; the cycle-model calibration's
    decoder programs run ``load, quantize, lower`` on an engine of its own (``cfg`` given).
    """

    board: object = None            # boards.Board, with any engine overrides applied
    model: object = None            # Hugging Face folder or torch.export archive
    example: str | None = None
    max_context: int | None = None
    trust_model: bool = False
    weights: str | None = None      # None: ternary for BitNet checkpoints, else int8
    lm_head: str | None = None
    stage: Path | None = None       # the build's staging folder (decoder/float is written in)
    cfg: object = None              # configure (or given): AccelConfig
    shape_only: bool = False        # SHAPE_STEPS: a transformers config, no weights
    # products
    fd: object = None               # load: FloatDecoder, its blocks recognised as read
    name: str = ""
    source: str = ""
    family: str = ""
    shape: object = None            # DecoderShape, or a Mamba's SsmShape
    notes: list = dataclasses.field(default_factory=list)
    resources: dict | None = None   # configure, size
    qd: object = None               # quantize: QDecoder
    sizing: dict | None = None      # size: the TLMM engine's sizing (ternary decoders)
    quality: dict | None = None     # check: golden vs float
    lw: object = None               # lower: programs, image, memory map
    config_shape: object = None     # shape-only load: compiler.llm_config.ConfigShape
    prediction: dict | None = None  # shape-only predict: hwflow.predict.predict_decoder
    verilog: str = ""               # rtl
    report: dict | None = None      # report
    _tmp: object = None             # an example's folder, read while quantizing

    @property
    def state_space(self) -> bool:
        """A Mamba (``compiler.ssm``): a recurrent state, no KV cache."""
        from hwflow.compiler.ssm import SsmShape

        return isinstance(self.shape, SsmShape)

    def close(self) -> None:
        """Remove the example's temporary folder (after the last step, or a failed one)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def load(job: DecoderJob) -> None:
    """Step ``load``: the Hugging Face folder or torch.export archive -> FloatDecoder (pattern
    recogniser). Its blocks are recognised as ``quantize`` reads them
    (``compiler.llm_frontend.open_decoder``), so the float32 model (4.9 GB for Llama-3.2-1B) is
    never in memory whole."""
    import tempfile

    job._tmp = tempfile.TemporaryDirectory()
    fd = _load(job.model, job.example, job.trust_model, job.max_context, Path(job._tmp.name),
               stream=True)
    if job.example is not None:     # not the temporary folder it was written to: same bytes
        fd = dataclasses.replace(fd, source=f"example:{job.example}")
    job.fd, job.name, job.source = fd, job.example or fd.name, fd.source
    job.shape = fd.shape
    if job.state_space:
        _mamba_options(job)
    else:
        job.max_context = fd.max_context
    if job.weights is None and getattr(fd, "ternary_weights", False):
        job.weights = "ternary"
        job.notes.append("the block linears are ternary in the checkpoint (0/+-s per tensor): "
                         "compiled as ternary on the table-lookup engine (--weights int8 to "
                         "quantize them as int8)")


def configure(job: DecoderJob) -> None:
    """Step ``configure``: the board's engine (it must have the transformer units), checked to
    fit, and the KV cache of ``max_context`` checked against the board's memory."""
    brd = job.board
    job.cfg = choose_config(brd)
    if not job.cfg.transformer:
        raise HwflowError(f"board {brd.name}'s accelerator has no transformer units (SFU and "
                          "attention; `engine: transformer: false` in its YAML); choose a "
                          "larger board such as u280 or kv260")
    if not job.state_space:
        check_context_fits(job.shape, job.max_context, brd)
    if not job.shape_only:          # the shape-only prediction reports the fit, it does not refuse
        job.resources = check_fit(job.cfg, brd)


def quantize(job: DecoderJob) -> None:
    """Step ``quantize``: FloatDecoder -> QDecoder (static scales from a seeded calibration
    run), a block at a time; each float block is written to ``decoder/float`` in the staging
    folder as it is read (the ``check`` step reads it back a layer at a time)."""
    from hwflow.compiler.errors import CompileError
    from hwflow.compiler.llm_quant import DecoderQuantizer

    stage = job.stage if job.stage is not None else Path(job._tmp.name)
    (stage / "decoder").mkdir()
    if job.state_space:
        _quantize_mamba(job, stage / "decoder" / "float")
        return
    fd, job.fd = job.fd, None
    try:
        # the float decoder is written and quantized a layer at a time; the float32 embedding
        # (1 GB for Llama-3.2-1B) goes once written and quantized
        with FloatDecoderWriter(stage / "decoder" / "float", fd) as saved:
            quant = DecoderQuantizer(fd, fd.max_context, weights=job.weights,
                                     lm_head=job.lm_head)
            blocks, head = fd.layers, fd.lm_head
            job.family = fd.family
            del fd
            for i, ly in enumerate(blocks):
                saved.add(i, ly)
                quant.add(i, ly)
                del ly
            job.qd = quant.finish(head)
            job.weights = quant.weights
    except CompileError as e:
        raise HwflowError(str(e)) from None
    job.close()                     # the example's folder is read


#: ``--weights`` a Mamba takes: its linears' weight bits (LightMamba's rotations either way).
MAMBA_WEIGHTS = {"int8": 8, "int4": 4}


def _mamba_options(job: DecoderJob) -> None:
    """A Mamba's options, in ``load`` (both compiles): ``--max-context`` does not apply (a
    note if given: the state does not grow), ``--weights`` int8 (default) or int4 for every
    linear and the LM head (one line otherwise)."""
    from hwflow.compiler.ssm_graph import MAMBA_MAX_CONTEXT

    if job.max_context is not None:
        job.notes.append(f"--max-context {job.max_context} ignored: a state-space model's "
                         "state does not grow with the context")
    job.max_context = MAMBA_MAX_CONTEXT
    job.weights = job.weights or "int8"
    if job.weights not in MAMBA_WEIGHTS or job.lm_head not in (None, job.weights):
        lm = f" --lm-head {job.lm_head}" if job.lm_head else ""
        raise HwflowError(f"--weights {job.weights}{lm}: a Mamba takes "
                          f"{', '.join(MAMBA_WEIGHTS)} for every linear, its LM head too")


def _quantize_mamba(job: DecoderJob, float_path: Path) -> None:
    """Step ``quantize`` of a Mamba: the float model written to ``float_path``, then
    quantized (``compiler.ssm_quant.quantize_mamba``: static scales from a seeded calibration
    run, the residual stream rotated and the out-projection's input Hadamard-transformed;
    8-bit activations, ``job.weights`` int8 or int4)."""
    from hwflow.compiler.ssm_quant import quantize_mamba

    fm, job.fd = job.fd, None
    save_decoder(fm, float_path)
    job.qd = quantize_mamba(fm, wbits=MAMBA_WEIGHTS[job.weights])
    job.family = fm.family
    job.close()


def size(job: DecoderJob) -> None:
    """Step ``size``: the TLMM engine when the decoder has ternary linears (``T``, ``Q`` from
    the board YAML or sized by ``mapping.accel_config.size_tlmm``, the accumulator as deep as the
    widest ternary linear), then the weight ring, activation buffer and ring placement the
    decoder needs (``mapping.decoder_sizing``, the shape-only compile's rule); the fit of
    the engine as enlarged."""
    from hwflow.mapping.accel_config import check_fit_tlmm
    from hwflow.mapping.decoder_sizing import size_buffers, tlmm_engine
    from hwflow.mapping.errors import MappingError
    from hwflow.mapping.llm_lower import tlmm_outputs

    brd, qd = job.board, job.qd
    widest = tlmm_outputs(qd, job.cfg.chain_len)
    try:
        if widest:
            job.cfg, job.sizing = tlmm_engine(qd, job.cfg, brd)
            job.resources = check_fit_tlmm(job.cfg, brd)
        job.cfg, sized = size_buffers(qd, job.cfg, brd, ternary=bool(widest))
    except MappingError as e:
        raise HwflowError(str(e)) from None
    if sized:
        try:
            job.resources = (check_fit_tlmm(job.cfg, brd) if job.cfg.tlmm
                             else check_fit(job.cfg, brd))
        except MappingError as e:
            raise HwflowError(f"{e} (the engine enlarged for this model)") from None
    job.notes += sized


def check(job: DecoderJob) -> None:
    """Step ``check``: the golden (integer) model against the float one
    (``compiler.lm.quant_report``), a decoder's float read back a layer at a time."""
    from hwflow.compiler.lm import quant_report

    path = job.stage / "decoder" / "float"
    fm = load_saved_decoder(path) if job.state_space else open_saved_decoder(path)
    job.quality = quant_report(fm, job.qd)


def lower(job: DecoderJob) -> None:
    """Step ``lower``: QDecoder -> one decode program, the prefill bucket programs and the
    memory image (``mapping.llm_lower``)."""
    from hwflow.mapping.errors import MappingError
    from hwflow.mapping.llm_lower import lower_decoder

    try:
        job.lw = lower_decoder(job.qd, job.cfg)
    except MappingError as e:
        raise HwflowError(str(e)) from None


def rtl(job: DecoderJob) -> None:
    """Step ``rtl``: the accelerator's Verilog (cached by content)."""
    job.verilog = _accelerator_verilog(job.cfg)


def report(job: DecoderJob) -> None:
    """Step ``report``: ``reports/compile.json``."""
    s, lw, brd = job.qd.shape, job.lw, job.board
    job.report = {
        "model": job.name, "kind": "decoder", "source": job.source, "family": job.family,
        "weights": job.weights,
        "lm_head": job.weights if job.state_space else
        job.qd.weight_formats["lm_head"]["weights"],
        "board": brd.name, "part": brd.part, "clock_mhz": brd.clock_mhz,
        "config": job.cfg.to_dict(), "config_notes": job.notes, "shape": s.to_dict(),
        "max_context": lw.max_context, "parameters": _parameters(s),
        **_program_report(lw, len(lw.image)),
        "golden_vs_float": job.quality,
        "resources": job.resources,
    }
    if job.sizing is not None:
        job.report["tlmm"] = {**lw.reports["tlmm"], "sizing": job.sizing}


def _parameters(s) -> int:
    """Parameters of a model of shape ``s`` (a decoder's, or a Mamba's ``SsmShape``): the
    linears, the embedding and the LM head (counted twice when tied), a Mamba's conv, A, D
    and biases; norms left out."""
    if hasattr(s, "d_state"):
        C = s.d_inner
        return int(s.vocab * s.hidden * 2 + s.layers * (
            s.hidden * 2 * C + C * s.d_conv + C * (s.dt_rank + 2 * s.d_state) + s.dt_rank * C
            + C * s.d_state + 3 * C + C * s.hidden))
    return int(s.vocab * s.hidden * 2 + s.layers * (
        s.hidden * (s.heads + 2 * s.kv_heads) * s.head_dim + s.heads * s.head_dim * s.hidden
        + 3 * s.hidden * s.intermediate))


def _program_report(lw, image_bytes: int) -> dict:
    """The report fields of a lowering that both kinds of decoder compile write."""
    return {"programs": lw.reports["programs"],
            "naive_program_bytes": lw.reports["naive_program_bytes"],
            "program_reduction": lw.reports["program_reduction"],
            "prefill_buckets": lw.buckets,
            "memory_image_bytes": image_bytes,
            "linears": lw.reports.get("layers"),
            "engines": _engines_per_layer(lw.reports.get("layers") or [])}


#: The decoder compile, in order: ``(step name, step function)`` of a :class:`DecoderJob`.
DECODER_STEPS = (("load", load), ("configure", configure), ("quantize", quantize),
                 ("size", size), ("check", check), ("lower", lower), ("rtl", rtl),
                 ("report", report))


def _layout_config(lw) -> dict:
    """The config.json entries of a decoder lowering's layout (both kinds of decoder build)."""
    return {"max_context": lw.max_context, "decode_prog_base": lw.decode_prog_base,
            "prefill_prog_bases": {str(b): a for b, a in lw.prefill_prog_bases.items()},
            "traffic_ranges": lw.memory_map.traffic_ranges()}


def decoder_files(d: DecoderJob) -> dict:
    """The files of a decoder build folder, for ``buildfolder.write_build``."""
    lw = d.lw
    return {
        "rtl/hwflow_accel.v": d.verilog,
        "memory_image.bin": lw.image,
        "memory_map.json": lw.memory_map.to_json() + "\n",
        "decoder/quantized": lambda p: save_decoder(d.qd, p),
        "config.json": {"kind": "decoder", "board": d.board.name,
                        "clock_mhz": d.board.clock_mhz, "accel": d.cfg.to_dict(),
                        "memory_rate_bytes": memory_rate_bytes(d.board, d.cfg),
                        **_layout_config(lw)},
        "reports/compile.json": d.report,
        "tb": lambda p: _write_testbench(p, d.qd, lw),
    }


# -- shape-only compile and predictions -------------------------------------------------------

def compile_shape_only(model=None, example=None, board="u280", out=None, max_context=None,
                       boards_dir=None, weights=None, lm_head=None):
    """Programs, memory map and predictions of a decoder from its ``transformers`` config
    alone (``hwflow compile CONFIG --shape-only``); returns ``(out_path, report)``.

    The model is instantiated on the meta device (``compiler.llm_config``: no weights are
    read or allocated), lowered from its shapes (``mapping.llm_lower``, ``shape_only``) and
    predicted (``hwflow.predict``). The build folder holds ``programs/*.bin`` (the decode and
    prefill bucket programs, 32-byte instructions), ``memory_map.json``, ``config.json``
    (``shape_only: true``), ``reports/compile.json`` and ``reports/predict.json``; no memory
    image, no RTL (it cannot be simulated).

    ``weights``: ``"int8"`` or ``"ternary"`` block linears; default ternary for BitNet configs.
    ``lm_head`` (``"int8"``, ``"int4"``) sets the LM head's weights apart from ``weights``.
    """
    _check_weights(weights, lm_head)
    if model is None and example is None:
        raise HwflowError("--shape-only needs a transformers config (config.json or a folder "
                          "holding one) or --example")
    job = DecoderJob(board=load_board(board, boards_dir), model=model, example=example,
                     max_context=max_context, weights=weights, lm_head=lm_head,
                     shape_only=True)
    # the config names the build folder: read it (and refuse a bad one) before claiming it
    run_steps(job, SHAPE_STEPS, select=("load", "configure"))
    brd = job.board
    out = Path(out) if out else Path("build") / f"{job.name}-{brd.name}"
    rebuild = compile_command(*([model] if example is None else ["--example", example]),
                              shape_only=True, board=brd.name, max_context=max_context,
                              weights=weights, lm_head=lm_head, boards_dir=boards_dir)
    with BuildOutput(out, rebuild) as claim:
        run_steps(job, SHAPE_STEPS, select=("lower", "predict", "report"))
        lw = job.lw
        code = b"".join(i.encode() for p in [lw.decode, *lw.prefill.values()] for i in p.program)
        with claim.writing({"kind": "decoder", "shape_only": True,
                            "digest": hashlib.sha256(code).hexdigest()[:16]}) as tmp:
            write_build(tmp, shape_only_files(job))
    return out, {**job.report, "prediction": job.prediction}


def load_shape(job: DecoderJob) -> None:
    """Shape-only step ``load``: the ``transformers`` config -> the decoder's shapes, the model
    instantiated on the meta device (``compiler.llm_config``: no weights read or allocated);
    ``max_context`` checked against it (default: the model's, at most 2048)."""
    from hwflow.compiler.errors import CompileError
    from hwflow.predict import _config_shape

    try:
        cs = _config_shape(job.example if job.example is not None else job.model)
    except CompileError as e:
        raise HwflowError(str(e)) from None
    s = cs.shape
    name = job.example or Path(cs.source).stem
    job.name = Path(cs.source).parent.name if name == "config" else name
    job.config_shape, job.shape, job.source, job.family = cs, s, cs.source, cs.family
    if job.state_space:
        _mamba_options(job)
        return
    given = job.max_context
    if given is None:
        job.max_context = min(s.max_position, 2048)
    if not 1 <= int(job.max_context) <= s.max_position:
        raise HwflowError(f"--max-context {given}: give 1..{s.max_position} (the model's "
                          "max_position_embeddings)")
    job.max_context = int(job.max_context)
    job.weights = job.weights or ("ternary" if cs.ternary else "int8")


def lower_shape_only(job: DecoderJob) -> None:
    """Shape-only step ``lower``: the programs and memory map from the shapes alone, the
    engine sized for them (``mapping.decoder_sizing.lower_shape``: the TLMM engine, buffers
    and memory ports)."""
    from hwflow.mapping.decoder_sizing import lower_shape

    job.lw, job.cfg, job.notes = lower_shape(
        job.shape, job.cfg, job.board, weights=job.weights, max_context=job.max_context,
        family=job.family, lm_head=job.lm_head)


def predict(job: DecoderJob) -> None:
    """Shape-only step ``predict``: decode tokens/s, time to first token, memory bandwidth
    and resources (``hwflow.predict.predict_decoder``)."""
    from hwflow.predict import predict_decoder

    job.prediction = predict_decoder(job.shape, job.cfg, job.board,
                                     ternary=job.weights == "ternary", lowered=job.lw)
    job.prediction["notes"] = job.notes


def report_shape_only(job: DecoderJob) -> None:
    """Shape-only step ``report``: ``reports/compile.json``."""
    s, lw, brd, cfg, pred = job.shape, job.lw, job.board, job.cfg, job.prediction
    job.report = {
        "model": job.name, "kind": "decoder", "shape_only": True, "source": job.source,
        "family": job.family, "weights": job.weights,
        "lm_head": job.weights if job.state_space else lm_head_weights(job.weights, job.lm_head),
        "board": brd.name, "part": brd.part, "clock_mhz": brd.clock_mhz,
        "config": cfg.to_dict(), "config_notes": job.notes, "shape": s.to_dict(),
        "max_context": lw.max_context, "parameters": job.config_shape.parameters,
        **_program_report(lw, lw.memory_map.total_bytes),
        "resources": pred["resources"], "resource_fit": pred["resource_fit"],
        "fits": pred["fits"],
    }
    if cfg.tlmm and job.weights == "ternary":
        job.report["tlmm"] = lw.reports.get("tlmm")


#: The shape-only compile (``--shape-only``): the decoder compile with the shapes of a
#: ``transformers`` config for the weights, and a prediction for the simulation.
SHAPE_STEPS = (("load", load_shape), ("configure", configure), ("lower", lower_shape_only),
               ("predict", predict), ("report", report_shape_only))


def shape_only_files(job: DecoderJob) -> dict:
    """The files of a shape-only build folder (see :func:`compile_shape_only`), for
    ``buildfolder.write_build``: ``programs/decode.bin`` and ``programs/prefill<B>.bin`` hold
    each program's instructions as an image would (32 bytes each, END last)."""
    lw, cs, report = job.lw, job.config_shape, job.report
    files = {f"programs/{info.name}.bin": b"".join(i.encode() for i in info.program)
             for info in [lw.decode, *lw.prefill.values()]}
    return {
        **files,
        "memory_map.json": lw.memory_map.to_json() + "\n",
        "config.json": {"kind": "decoder", "shape_only": True, "board": job.board.name,
                        "clock_mhz": job.board.clock_mhz, "accel": job.cfg.to_dict(),
                        "memory_rate_bytes": memory_rate_bytes(job.board, job.cfg),
                        "shape": cs.shape.to_dict(), "family": cs.family, "act": cs.act,
                        "sub_norms": cs.sub_norms, "head_norms": cs.head_norms,
                        "weights": report["weights"], "lm_head": report["lm_head"],
                        "source": cs.source, **_layout_config(lw)},
        "reports/compile.json": report,
        "reports/predict.json": job.prediction,
    }


def _shape_only_lowering(conf: dict):
    """The lowering of a shape-only build folder, rebuilt from its config.json."""
    from hwflow.compiler.decoder import DecoderShape
    from hwflow.compiler.llm_config import ConfigShape, shape_decoder, shape_mamba
    from hwflow.compiler.ssm import SsmShape
    from hwflow.hw.config import AccelConfig
    from hwflow.mapping.llm_lower import lower_decoder

    if conf["family"] == "mamba":
        shape = SsmShape(**conf["shape"])
        return lower_decoder(shape_mamba(shape, conf["weights"]), AccelConfig(**conf["accel"]),
                             shape_only=True), shape, False
    shape = DecoderShape(**conf["shape"])
    cs = ConfigShape(shape, conf["family"], conf["act"], bool(conf["sub_norms"]),
                     conf["weights"] == "ternary", 0, conf.get("source", ""),
                     bool(conf.get("head_norms", False)))
    qd = shape_decoder(cs, conf["max_context"], conf["weights"], lm_head=conf.get("lm_head"))
    return lower_decoder(qd, AccelConfig(**conf["accel"]), shape_only=True), shape, \
        conf["weights"] == "ternary"


def predict_build(out, boards_dir=None, fit=None) -> dict:
    """Predictions (``hwflow.predict.predict_decoder``) of a decoder build folder, shape-only
    or full; writes and returns ``reports/predict.json``'s content."""
    from hwflow.hw.config import AccelConfig
    from hwflow.mapping.llm_lower import lower_decoder
    from hwflow.predict import predict_decoder

    out = Path(out)
    # the image is not read here: its size is checked, hashing gigabytes would be wasted
    conf = open_build(out, size_only=("memory_image.bin",))
    if conf.get("kind") != "decoder":
        raise HwflowError(f"{out} holds a {conf.get('kind', 'mlp')} build; hwflow predict is "
                          "for language-model (decoder) builds")
    brd = load_board(conf["board"], boards_dir)
    if conf.get("shape_only"):
        lw, shape, ternary = _shape_only_lowering(conf)
    else:
        qd = load_saved_decoder(out / "decoder" / "quantized")
        lw = lower_decoder(qd, AccelConfig(**conf["accel"]), shape_only=True)
        shape, ternary = qd.shape, bool(lw.reports.get("tlmm"))
    pred = predict_decoder(shape, lw.cfg, brd, ternary=ternary, lowered=lw,
                           clock_mhz=conf.get("clock_mhz"), fit=fit)
    write_json(out / "reports" / "predict.json", pred)
    return pred


def _engines_per_layer(linears: list) -> dict:
    """``{"L0": {"q": "tlmm", ...}, ..., "lm_head": "mpe"}``: the engine of every linear."""
    out: dict = {}
    for r in linears:
        layer, _, lin = r["name"].partition(".")
        if lin:
            out.setdefault(layer, {})[lin] = r.get("engine", "mpe")
        else:
            out[layer] = r.get("engine", "mpe")
    return out


def _write_testbench(tb: Path, qd, lw) -> None:
    """The build folder's standalone testbench (``sim.runner.write_standalone_testbench``):
    the default prompt and decode runs, each run's logits row as golden computes it."""
    from hwflow.compiler.lm import golden_generate
    from hwflow.sim.runner import rtl_jobs, write_standalone_testbench

    new_tokens = max(1, min(DEFAULT_NEW_TOKENS, lw.max_context - DEFAULT_PROMPT_LEN))
    ids = default_prompt(qd.shape.vocab)
    golden = golden_generate(qd, ids, new_tokens + 1)
    host, steps = rtl_jobs(lw, ids, new_tokens)
    want = [[w.astype(np.int8).tobytes()]
            for w in golden_rows(golden, host, lw.io.logits_row_bytes)]
    write_standalone_testbench(tb, steps, want, prompt=ids,
                               golden_tokens=[int(t) for t in golden.tokens])


def _accelerator_verilog(cfg) -> str:
    from hwflow.flow import accelerator_verilog

    return accelerator_verilog(cfg)


# -- prompts and golden rows (the build's testbench, hwflow sim, the host example) -----------

def parse_prompt(text: str, vocab: int) -> list[int]:
    """Token ids from ``--prompt``: integers separated by commas and/or spaces."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise HwflowError(f"--prompt '{text}': give token ids, integers separated by commas or "
                          "spaces (e.g. --prompt '1,5,9')") from None
    if not ids:
        raise HwflowError("--prompt is empty; give at least one token id")
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise HwflowError(f"--prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    return ids


def default_prompt(vocab: int, n: int = DEFAULT_PROMPT_LEN, seed: int | None = None) -> list[int]:
    """The seeded random prompt of ``--prompt-len`` (seed 0 unless ``--seed``)."""
    return [int(t) for t in np.random.default_rng(0 if seed is None else seed).integers(
        0, vocab, n)]


def golden_rows(golden, host: list, row_bytes: int) -> list:
    """Per run, the golden logits of its last row as the RTL stores them: ``[row_bytes]``
    int8, zero past the vocabulary (a prompt run's: the prompt row ``pos + tokens - 1``)."""
    prompt = golden.step_logits[0]
    want = [prompt[st.pos + st.tokens - 1] for st, is_decode in host if not is_decode]
    want += [row[0] for row in golden.step_logits[1:]]
    return [np.pad(w, (0, row_bytes - w.shape[0])) for w in want]
