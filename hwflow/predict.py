"""Predictions of a decoder on an accelerator: decode tokens/s, prefill time-to-first-token,
external-memory bandwidth, resources and fit -- from the architecture alone (no weights).

The numbers come from the programs the mapper emits for the shape (``mapping.llm_lower``,
``shape_only=True``: the same instructions a real checkpoint of that shape gets, with
placeholder epilogue constants that no cycle or byte count reads) and the cycle model
(``mapping.cycles.predict``). What each figure means:

* **decode** -- cycles of one run of the decode program, averaged over the positions
  ``0 .. max_context-1`` (the attention reads ``pos + 1`` cache rows, so a step gets slower as
  the context grows); tokens/s = clock / cycles. ``cycles_first`` / ``cycles_last`` are the
  steps at position 0 and ``max_context - 1``.
* **prefill** -- what the host runs for a prompt of ``n`` tokens (``mapping.host_schedule``): chunks
  of the largest bucket at positions ``0, B, 2B, ...``, each run by the smallest bucket that
  holds it (a 1-token chunk by the decode program). The last chunk writes the logits of the
  prompt's last token, whose argmax is the first generated token, so TTFT = the chunks'
  cycles / clock; host time between runs is not counted.
* **bandwidth** -- external bytes one decode step moves (``mapping.traffic.program_traffic``:
  weights, KV cache reads and writes, token ids and logits, instruction fetch; counted as the ISA
  functional model counts them) at the mean position, over its time; against the engine's
  port peak (``beat_bytes`` per cycle) and the board's ``memory.bandwidth_gbps``.
* **resources** -- ``mapping.accel_config.estimate_resources`` (plus the TLMM engine for ternary
  decoders) and the fit check; ``memory`` -- the image (weights, KV caches for
  ``max_context``, programs, I/O) against the board's ``memory.capacity_gb``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

from hwflow.compiler.decoder import DecoderShape
from hwflow.compiler.llm_config import ConfigShape, shape_from_config
from hwflow.errors import HwflowError
from hwflow.hw.isa import FLAG_POS, Opcode

__all__ = ["load_shape", "predict_decoder", "decode_cycles",
           "format_prediction", "PROMPT_LENS"]

#: Prompt lengths of the TTFT figures.
PROMPT_LENS = (64, 128, 512)
#: Positions whose decode-step cycles a prediction lists apart (where the context has them):
#: a transformer's grow with the position, a state-space model's do not.
POSITIONS_SHOWN = (0, 1024, 8192)
#: Positions sampled for the mean decode step (evenly spaced, both ends included). With the
#: attention linear in the position this mean equals the mean over every position.
DECODE_SAMPLES = 33


# -------------------------------------------------------------------------------- shapes

def _config_shape(model) -> ConfigShape:
    from hwflow.compiler.llm_config import is_ssm_config, mamba_shape_from_config
    from hwflow.llm_examples import LLM_EXAMPLES

    if str(model) in LLM_EXAMPLES:
        from hwflow.llm_examples import example_config

        with tempfile.TemporaryDirectory() as td:
            example_config(model).save_pretrained(td)
            cs = _config_shape(td)
        return replace(cs, source=f"example:{model}")
    return (mamba_shape_from_config if is_ssm_config(model) else shape_from_config)(model)


def load_shape(model: str) -> tuple[DecoderShape, str, bool]:
    """(shape, family, ternary) from a config.json path, a folder holding one, or a built-in
    example name (tiny-llama, tiny-bitnet).

    The model is instantiated on the meta device (``compiler.llm_config``): no weights are
    read or allocated. ``ternary``: the block linears are ternary by default (BitNet b1.58).

    Raises
    ------
    hwflow.compiler.errors.CompileError
        Missing or unreadable config, an unsupported architecture or feature (one line).
    """
    cs = _config_shape(model)
    return cs.shape, cs.family, cs.ternary


# ----------------------------------------------------------------------------- programs

class _Timer:
    """Cycles of a program run at a position, for many positions.

    ``mapping.cycles.predict`` is a sum over instructions plus fetch and run overheads, and
    only the position-dependent instructions (ATTN: ``pos + b + 1`` keys; POS LOAD/STORE)
    change with the position. When the model is that sum (checked on its own result at the
    first and the last position, and with a PREFETCH only where its overlap does not change
    with the position), a run at another position costs only those instructions'
    ``instr_cycles`` (and their waits behind a prefetching ring); otherwise every position
    calls ``predict`` (the same numbers, slower: a 512-token TTFT on 1-row buckets is 512
    runs of a 486-instruction program, about 10 s)."""

    def __init__(self, cfg, fit, last_pos: int):
        self.cfg, self.fit, self.last = cfg, fit, int(last_pos)
        self._split: dict = {}
        self._memo: dict = {}

    def _predict(self, program, pos: int) -> dict:
        from hwflow.mapping.cycles import predict

        return predict(program, self.cfg, pos=int(pos), fit=self.fit)

    def _prepare(self, name: str, program):
        r0, r1 = self._predict(program, 0), self._predict(program, self.last)
        self._memo[(name, 0)], self._memo[(name, self.last)] = r0["total"], r1["total"]
        per0, per1 = r0.get("per_instruction"), r1.get("per_instruction")
        if per0 is None or per1 is None:
            return None
        dep = [k for k, i in enumerate(program)
               if i.op == Opcode.ATTN or i.flags & FLAG_POS and i.op in (
                   Opcode.LOAD, Opcode.STORE, Opcode.KVSTORE)
               or per0[k] != per1[k]]
        # A PREFETCH's overlap ties an instruction to those before it: a MATMUL's head start
        # grows with an ATTN before it, and a read waits behind the ring only while the ring
        # streams (both monotonic in the position, so equal at the ends is equal between).
        # A recomputed instruction keeps its wait, which must not change; a prefetched
        # MATMUL whose head start changes is not a sum of instructions.
        if any(r0["heads"][k] or r0["waits"][k] != r1["waits"][k] for k in dep):
            return None
        rest0 = r0["total"] - sum(per0[k] for k in dep)
        rest1 = r1["total"] - sum(per1[k] for k in dep)
        if rest0 != rest1:      # not a sum of instructions: no shortcut
            return None
        from hwflow.mapping.cycles import fit_for

        # resolve the default fit once, not per position
        cal = self.fit if self.fit is not None else fit_for(self.cfg, None)
        return rest0, [(program[k], r0["waits"][k]) for k in dep], cal

    def cycles(self, name: str, program, pos: int) -> int:
        key = (name, int(pos))
        if key in self._memo:
            return int(self._memo[key])
        if name not in self._split:
            self._split[name] = self._prepare(name, program)
            if key in self._memo:
                return int(self._memo[key])
        split = self._split[name]
        if split is None:
            total = self._predict(program, pos)["total"]
        else:
            from hwflow.mapping.cycles import instr_cycles

            rest, dep, cal = split
            kw = {"fit": cal} if cal is not None else {}
            total = rest + sum(instr_cycles(i, self.cfg, int(pos), **kw) + wait
                               for i, wait in dep)
        self._memo[key] = total
        return int(total)


#: The short-context decode figure: the mean over positions ``0 .. SHORT_CONTEXT - 1``.
SHORT_CONTEXT = 128


def _sample_positions(max_context: int, samples: int = DECODE_SAMPLES) -> list[int]:
    if max_context <= samples:
        return list(range(max_context))
    last = max_context - 1
    return sorted({round(k * last / (samples - 1)) for k in range(samples)})


def decode_cycles(lowered, fit=None, timer: _Timer | None = None) -> dict:
    """Decode-step cycles of a lowered decoder: the mean over positions ``0 .. max_context-1``
    (:data:`DECODE_SAMPLES` evenly spaced, both ends included), the first and the last."""
    timer = timer or _Timer(lowered.cfg, fit, lowered.max_context - 1)
    prog = lowered.decode.program
    pts = _sample_positions(lowered.max_context)
    cyc = [timer.cycles("decode", prog, p) for p in pts]
    mean_pos = sum(pts) / len(pts)
    short = _sample_positions(min(SHORT_CONTEXT, lowered.max_context))
    cyc_short = [timer.cycles("decode", prog, p) for p in short]
    return {"cycles_per_token": sum(cyc) / len(cyc), "cycles_first": cyc[0],
            "cycles_last": cyc[-1], "mean_pos": mean_pos, "positions_sampled": len(pts),
            "cycles_per_token_short": sum(cyc_short) / len(cyc_short)}


# -------------------------------------------------------------------------- configuring

def _resources(cfg, board) -> tuple[dict, dict, bool, str | None]:
    """``(estimate_resources, extra, fits, why not)``: the accelerator's estimate as
    ``mapping.accel_config.estimate_resources`` gives it (the TLMM engine included when built);
    ``extra`` holds the board's resources and the fit report (used vs available, and the TLMM
    engine's share under ``tlmm``)."""
    from hwflow.mapping.accel_config import check_fit_tlmm, estimate_resources
    from hwflow.mapping.errors import MappingError

    extra = {"available": dict(board.resources)}
    try:
        est = estimate_resources(cfg, getattr(board, "bram_kbits", 36))
    except MappingError as e:      # the resource model's data missing or unreadable
        return {}, extra, False, str(e)
    try:
        extra["fit"] = check_fit_tlmm(cfg, board)
    except MappingError as e:
        return est, extra, False, str(e)
    if "tlmm" in extra["fit"]:
        extra["tlmm"] = extra["fit"]["tlmm"]
    return est, extra, True, None



# ------------------------------------------------------------------------------ predict

def predict_decoder(shape, cfg, board, *, ternary=False, max_context=2048,
                    prompt_lens=PROMPT_LENS, clock_mhz=None, fit=None, family=None,
                    lowered=None, adjust=True, weights=None, widen=True,
                    lm_head=None) -> dict:
    """Predict a decoder of ``shape`` on accelerator ``cfg`` of ``board`` (see the module
    docstring for what each figure means).

    Parameters
    ----------
    shape : DecoderShape
    cfg : AccelConfig
        The accelerator; a ternary decoder gets the TLMM engine if ``cfg`` lacks it, and (with
        ``adjust``) a weight ring, activation buffer or address width too small for the model
        is enlarged (all in ``notes``; ``config`` is what was predicted).
    board : hwflow.boards.Board
    ternary : bool
        Block linears ternary (TMATMUL on the TLMM engine) instead of int8.
    max_context : int
        KV cache length (capped by ``shape.max_position``).
    prompt_lens : iterable of int
        Prompt lengths of the TTFT figures (longer than ``max_context``: ``None`` figures).
    clock_mhz : float, optional
        Default the board's kernel clock.
    fit : optional
        The cycle model's fit, passed to ``mapping.cycles.predict`` (``mapping.cycles.fit_for``).
    family : str, optional
        Block structure: ``"bitnet"`` (sub-norms, gamma codes) or a LLaMA family; default
        BitNet's for ternary, LLaMA's otherwise.
    lowered : LoweredDecoder, optional
        An existing lowering to predict (a full build's); ``shape``/``ternary`` then only
        label the result.
    adjust : bool
        Size the engine for the model where it is too small (default); False: such a
        configuration raises :class:`~hwflow.errors.HwflowError` (one line).
    widen : bool
        With ``adjust``: give the engine every memory channel it fits with (default); False
        keeps the ports unless the image needs more (a sweep point's engine).
    weights, lm_head : str, optional
        The block linears' and the LM head's weights (:func:`lower_shape`).

    Returns
    -------
    dict
        ``{"decode": {"cycles_per_token", "tokens_per_s", "context", ...}, "prefill": {"64":
        {"cycles", "ttft_ms", "chunks"}, ...}, "bandwidth": {"bytes_per_token",
        "achieved_gbps", "port_peak_gbps", "board_peak_gbps", "utilization", ...},
        "resources": {...estimate_resources...}, "resource_fit": {"tlmm", "available",
        "fit"}, "memory": {...}, "fits": bool, "clock_mhz": float, "config":
        cfg.to_dict(), "notes": [...]}``.
    """
    from hwflow.mapping.cycles import board_fit
    from hwflow.mapping.decoder_sizing import lower_shape
    from hwflow.mapping.errors import MappingError
    from hwflow.mapping.host_schedule import host_schedule, run_program
    from hwflow.mapping.traffic import program_traffic

    if lowered is None:
        try:
            lw, cfg, notes = lower_shape(shape, cfg, board, ternary=ternary,
                                         max_context=max_context, family=family, adjust=adjust,
                                         weights=weights, widen=widen, lm_head=lm_head)
        except MappingError as e:
            raise HwflowError(str(e)) from None
    else:
        lw, cfg, notes = lowered, lowered.cfg, []
    clock = float(clock_mhz or board.clock_mhz)
    hz = clock * 1e6
    T = lw.max_context

    fit = board_fit(cfg, board, fit, clock)     # the memory the board delivers to the ports
    timer = _Timer(cfg, fit, T - 1)
    dec = decode_cycles(lw, fit, timer)
    cpt = dec["cycles_per_token"]
    decode = {"cycles_per_token": cpt, "tokens_per_s": hz / cpt,
              "cycles_at_positions": {str(p): timer.cycles("decode", lw.decode.program, p)
                                      for p in POSITIONS_SHOWN if p < T},
              "context": f"mean over positions 0..{T - 1} ({dec['positions_sampled']} evenly "
                         "spaced samples)",
              "cycles_first": dec["cycles_first"], "cycles_last": dec["cycles_last"],
              "ms_per_token": 1e3 * cpt / hz,
              "tokens_per_s_short": hz / dec["cycles_per_token_short"],
              "short_context": min(SHORT_CONTEXT, T)}

    prefill = {}
    for n in prompt_lens:
        n = int(n)
        if not 1 <= n <= T:
            prefill[str(n)] = {"cycles": None, "ttft_ms": None,
                               "note": f"prompt longer than max_context {T}"}
            continue
        # the prompt's runs, as the host makes them
        chunks = host_schedule(n, lw.buckets, recurrent=lw.recurrent)
        cyc = sum(timer.cycles(r.program, run_program(lw, r.program).program, r.pos)
                  for r in chunks)
        prefill[str(n)] = {"cycles": cyc, "ttft_ms": 1e3 * cyc / hz, "chunks": len(chunks),
                           "bucket": chunks[0].program}

    mean_pos = int(round(dec["mean_pos"]))
    traffic = program_traffic(lw.decode, cfg, mean_pos, lw.memory_map)     # mapping.traffic
    achieved = traffic["total"] * hz / cpt / 1e9
    port_peak = cfg.beat_bytes * hz / 1e9
    board_peak = float(board.memory["bandwidth_gbps"])     # delivered, per the board file
    # the roofline: no configuration moves more bytes per second than the memory delivers
    delivered = min(port_peak, board_peak)
    roofline = delivered * 1e9 / traffic["total"] if traffic["total"] else float("inf")
    if decode["tokens_per_s"] > roofline:
        notes.append(f"decode capped at the delivered-bandwidth roofline ({roofline:.2f} "
                     f"tokens/s: {traffic['total'] / 1e6:,.1f} MB per token at "
                     f"{delivered:g} GB/s); the cycle model gave {decode['tokens_per_s']:.2f}")
        decode["tokens_per_s"] = roofline
        decode["cycles_per_token"] = hz / roofline
        achieved = delivered
    bandwidth = {"bytes_per_token": traffic["total"], "traffic": traffic,
                 "weight_bytes_per_token": traffic["weights_read"],
                 "achieved_gbps": achieved, "port_peak_gbps": port_peak,
                 "board_peak_gbps": board_peak, "utilization": achieved / port_peak,
                 "board_utilization": achieved / board_peak, "at_pos": mean_pos,
                 "roofline_tokens_per_s": roofline, "delivered_gbps": delivered}

    resources, res_extra, fits, why = _resources(cfg, board)
    image = lw.memory_map.total_bytes
    cap = board.capacity_bytes                  # memory.capacity_gb, validated by boards/
    by_kind: dict = {}
    for r in lw.memory_map.regions:
        by_kind[r.kind] = by_kind.get(r.kind, 0) + r.nbytes
    # every port is wired to a channel, which holds its stripe of the image (architecture.md,
    # "External memory"): the image fits port by port, not just in total
    channel_cap = board.port_capacity_bytes(cfg.mem_ports)
    per_port = image / cfg.mem_ports
    memory = {"image_bytes": image, "by_kind": by_kind, "capacity_bytes": int(cap),
              "channels": int(board.memory["channels"]), "ports": cfg.mem_ports,
              "bytes_per_port": int(per_port), "port_capacity_bytes": int(channel_cap),
              "fits": bool(cap and image <= cap and per_port <= channel_cap)}
    if not memory["fits"]:
        fits = False
        why = (why + "; " if why else "") + (
            f"memory image {image / 1e9:.2f} GB > the board's {cap / 1e9:.1f} GB"
            if image > cap else
            f"memory image {image / 1e9:.2f} GB over {cfg.mem_ports} ports = "
            f"{per_port / 1e9:.2f} GB per port > {channel_cap / 1e9:.3f} GB a port's share of "
            "its channel")
    out = {"decode": decode, "prefill": prefill, "bandwidth": bandwidth,
           "resources": resources, "resource_fit": res_extra, "memory": memory,
           "fits": fits, "clock_mhz": clock,
           "config": cfg.to_dict(), "max_context": T, "prefill_buckets": lw.buckets,
           "ternary": bool(cfg.tlmm and ternary), "notes": notes,
           "shape": shape.to_dict() if shape is not None else lw.reports.get("shape")}
    if why:
        out["fit_error"] = why
    return out


# ------------------------------------------------------------------------------ printing

def format_prediction(p: dict) -> list[str]:
    """The prediction as a few lines for the terminal."""
    d, b = p["decode"], p["bandwidth"]
    lines = [f"decode: {d['tokens_per_s']:.2f} tokens/s ({d['cycles_per_token']:,.0f} cycles "
             f"per token at {p['clock_mhz']:g} MHz; {d['context']}); "
             f"{d.get('tokens_per_s_short', d['tokens_per_s']):.2f} tokens/s over positions "
             f"0..{d.get('short_context', 128) - 1}"]
    ttft = ", ".join(f"{n}: {v['ttft_ms']:.1f} ms" if v["ttft_ms"] is not None else f"{n}: -"
                     for n, v in p["prefill"].items())
    lines.append(f"time to first token (prompt tokens: TTFT): {ttft} (prefill buckets "
                 f"{p['prefill_buckets']})")
    lines.append(f"external memory: {b['bytes_per_token'] / 1e6:,.1f} MB per decode token "
                 f"(weights {b['weight_bytes_per_token'] / 1e6:,.1f} MB), "
                 f"{b['achieved_gbps']:.1f} GB/s = {b['utilization']:.1%} of the engine's "
                 f"{b['port_peak_gbps']:.1f} GB/s ports, {b['board_utilization']:.1%} of the "
                 f"board's delivered {b['board_peak_gbps']:g} GB/s; roofline "
                 f"{b.get('roofline_tokens_per_s', 0):.1f} tokens/s")
    acc, extra = p["resources"], p.get("resource_fit", {})
    fit = extra.get("fit", {})
    parts = [f"{fit.get(k, {}).get('primitive', k.upper())} {v:,}" for k, v in acc.items()
             if isinstance(v, (int, float))]
    if "tlmm" in extra:
        t = extra["tlmm"]
        parts.append(f"of which the TLMM engine LUT {t['lut']:,}, BRAM {t['bram']:g}, "
                     f"DSP {t['dsp']}")
    m = p["memory"]
    per_port = (f", {m['bytes_per_port'] / 1e9:.3f} GB per port of {m['ports']} "
                f"(a port's share of its channel {m['port_capacity_bytes'] / 1e9:.3f} GB)"
                if "bytes_per_port" in m else "")
    lines.append("resources: " + ", ".join(parts) + f"; memory image "
                 f"{m['image_bytes'] / 1e9:.2f} GB of {m['capacity_bytes'] / 1e9:.1f} GB"
                 + per_port)
    lines.append("fits the board: " + ("yes" if p["fits"] else f"NO ({p.get('fit_error')})"))
    for n in p.get("notes", []):
        lines.append(f"note: {n}")
    for k in ("dsp", "lut"):            # how a Versal board is counted (check_fit's notes)
        if "note" in fit.get(k, {}):
            lines.append(f"note: {k.upper()}: {fit[k]['note']}")
    return lines


def load_prediction(out) -> dict:
    """``reports/predict.json`` of a build folder (raises HwflowError if absent)."""
    f = Path(out) / "reports" / "predict.json"
    if not f.is_file():
        raise HwflowError(f"{out}: no reports/predict.json")
    return json.loads(f.read_text())
