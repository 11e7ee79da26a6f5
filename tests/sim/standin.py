"""A tiny stand-in ``hwflow_accel`` (same ports as the real one) for testing the memory model and
the runner without the real accelerator: a descriptor-driven copy engine.

At start it fetches descriptor super-beats from PROG_BASE, one after the other. Descriptor bits
(of the joined super-beat, port 0 low): [31:0] src, [63:32] dst, [79:64] n beats,
[95:80] burst (beats per read request), [96] backpressure (stall rd_data with an LFSR pattern).
It copies super-beats src..src+n-1 to dst..dst+n-1, issuing read requests ahead of the data
(so several bursts are outstanding), and stops at a descriptor with n == 0 (RETIRED counts the
descriptors, END included). A descriptor with bit 97 set is an "illegal opcode": ERROR = 1.
MPE_BUSY reports the beats copied plus 0xABCD << 32, to exercise the hi word.
"""

from __future__ import annotations

from hwflow.hw.config import AccelConfig


def standin_verilog(cfg: AccelConfig) -> str:
    NP, A, DW = cfg.mem_ports, cfg.addr_bits, 8 * cfg.port_bytes
    SBW = NP * DW
    assert SBW >= 98, "descriptor needs a super-beat of at least 13 bytes"
    ports = []
    for j in range(NP):
        p = f"mem__{j}__"
        ports += [
            f"output wire {p}rd_req__valid", f"input wire {p}rd_req__ready",
            f"output wire [{A + 15}:0] {p}rd_req__payload",
            f"input wire {p}rd_data__valid", f"output wire {p}rd_data__ready",
            f"input wire [{DW - 1}:0] {p}rd_data__payload",
            f"output wire {p}wr__valid", f"input wire {p}wr__ready",
            f"output wire [{A + DW - 1}:0] {p}wr__payload",
        ]
    all_rd_valid = " & ".join(f"mem__{j}__rd_data__valid" for j in range(NP))
    all_req_ready = " & ".join(f"mem__{j}__rd_req__ready" for j in range(NP))
    all_wr_ready = " & ".join(f"mem__{j}__wr__ready" for j in range(NP))
    joined = "{" + ", ".join(f"mem__{j}__rd_data__payload" for j in reversed(range(NP))) + "}"
    per_port = []
    for j in range(NP):
        p = f"mem__{j}__"
        per_port += [
            f"assign {p}rd_req__valid = req_pending;",
            f"assign {p}rd_req__payload = {{req_len, req_addr[{A - 1}:0]}};",
            f"assign {p}rd_data__ready = take;",
            f"assign {p}wr__valid = wr_go;",
            f"assign {p}wr__payload = {{data[{(j + 1) * DW - 1}:{j * DW}], wr_addr[{A - 1}:0]}};",
        ]
    return f"""// Stand-in hwflow_accel for the sim tests (copy engine); see tests/sim/standin.py.
module hwflow_accel (
    input wire clk, input wire rst,
    input wire ctrl__awvalid, output wire ctrl__awready, input wire [11:0] ctrl__awaddr,
    input wire ctrl__wvalid, output wire ctrl__wready, input wire [31:0] ctrl__wdata,
    input wire [3:0] ctrl__wstrb, output reg ctrl__bvalid, input wire ctrl__bready,
    output wire [1:0] ctrl__bresp, input wire ctrl__arvalid, output wire ctrl__arready,
    input wire [11:0] ctrl__araddr, output reg ctrl__rvalid, input wire ctrl__rready,
    output reg [31:0] ctrl__rdata, output wire [1:0] ctrl__rresp,
    {(", " + chr(10) + "    ").join(ports)},
    output wire irq
);
    reg running, done;
    reg [31:0] prog_base, error, retired;
    reg [63:0] cycles, copied;
    // AXI4-Lite: accept address and data together, one write at a time.
    assign ctrl__awready = ctrl__awvalid && ctrl__wvalid && !ctrl__bvalid;
    assign ctrl__wready = ctrl__awready;
    assign ctrl__bresp = 2'b00;
    assign ctrl__arready = !ctrl__rvalid;
    assign ctrl__rresp = 2'b00;
    assign irq = done;
    wire start = ctrl__awready && ctrl__awaddr == 12'h00 && ctrl__wdata[0];

    // Copy engine.
    localparam S_IDLE = 0, S_FETCH = 1, S_COPY = 2;
    reg [1:0] state;
    reg [31:0] desc_addr, src, dst;
    reg [15:0] n, burst, issued, received;
    reg stall_en;
    reg [15:0] lfsr;
    reg fetch_issued;
    wire [{SBW - 1}:0] data = {joined};
    wire all_valid = {all_rd_valid};
    wire stall = stall_en && lfsr[0];
    wire take = all_valid && ({all_wr_ready}) && !stall &&
                (state == S_FETCH ? fetch_issued : state == S_COPY);
    wire wr_go = take && state == S_COPY;
    wire [15:0] left = n - issued;
    wire [15:0] req_len = state == S_FETCH ? 16'd1 : (left < burst ? left : burst);
    wire [31:0] req_addr = state == S_FETCH ? desc_addr : src + issued;
    wire req_pending = (state == S_FETCH && !fetch_issued) || (state == S_COPY && issued != n);
    wire req_go = req_pending && ({all_req_ready});
    wire [31:0] wr_addr = dst + received;
    {(chr(10) + "    ").join(per_port)}

    always @(posedge clk) begin
        if (rst) begin
            running <= 0; done <= 0; prog_base <= 0; error <= 0; retired <= 0;
            cycles <= 0; copied <= 0; state <= S_IDLE; ctrl__bvalid <= 0; ctrl__rvalid <= 0;
            lfsr <= 16'hACE1; fetch_issued <= 0;
        end else begin
            lfsr <= {{lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]}};
            if (ctrl__awready) begin
                ctrl__bvalid <= 1;
                if (ctrl__awaddr == 12'h10) prog_base <= ctrl__wdata;
            end else if (ctrl__bready) ctrl__bvalid <= 0;
            if (ctrl__arvalid && ctrl__arready) begin
                ctrl__rvalid <= 1;
                case (ctrl__araddr)
                    12'h00: ctrl__rdata <= {{29'd0, !running, done, running}};
                    12'h10: ctrl__rdata <= prog_base;
                    12'h18: ctrl__rdata <= cycles[31:0];
                    12'h1C: ctrl__rdata <= cycles[63:32];
                    12'h20: ctrl__rdata <= copied[31:0];
                    12'h24: ctrl__rdata <= 32'hABCD;
                    12'h28: ctrl__rdata <= retired;
                    12'h2C: ctrl__rdata <= error;
                    default: ctrl__rdata <= 32'hDEADBEEF;
                endcase
            end else if (ctrl__rready) ctrl__rvalid <= 0;
            if (running) cycles <= cycles + 1;
            if (start) begin
                running <= 1; done <= 0; cycles <= 0; copied <= 0; retired <= 0; error <= 0;
                state <= S_FETCH; desc_addr <= prog_base; fetch_issued <= 0;
            end else begin
                if (req_go) begin
                    if (state == S_FETCH) fetch_issued <= 1; else issued <= issued + req_len;
                end
                if (take && state == S_FETCH) begin
                    retired <= retired + 1;
                    desc_addr <= desc_addr + 1;
                    fetch_issued <= 0;
                    if (data[97]) begin
                        error <= 1; running <= 0; done <= 1; state <= S_IDLE;
                    end else if (data[79:64] == 16'd0) begin
                        running <= 0; done <= 1; state <= S_IDLE;
                    end else begin
                        src <= data[31:0]; dst <= data[63:32]; n <= data[79:64];
                        burst <= data[95:80]; stall_en <= data[96];
                        issued <= 0; received <= 0; state <= S_COPY;
                    end
                end
                if (wr_go) begin
                    received <= received + 1;
                    copied <= copied + 1;
                    if (received + 16'd1 == n) state <= S_FETCH;
                end
            end
        end
    end
endmodule
"""


def descriptor(cfg: AccelConfig, src: int, dst: int, n: int, burst: int = 1,
               stall: bool = False, illegal: bool = False) -> bytes:
    v = src | dst << 32 | n << 64 | burst << 80 | int(stall) << 96 | int(illegal) << 97
    return v.to_bytes(cfg.beat_bytes, "little")
