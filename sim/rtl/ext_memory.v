// Simulation model of ONE external memory port (an HBM pseudo-channel or a DDR port) as
// docs/architecture.md, "External memory", describes it from the accelerator's side:
//
//   rd_req  (in)  payload {len[15:0], addr[ADDR_BITS-1:0]}  read `len` beats from beat `addr`
//   rd_data (out) payload data[8*DATA_BYTES-1:0]            beats in request order
//   wr      (in)  payload {data, addr[ADDR_BITS-1:0]}       write one beat, applied on accept
//
// Timing: a request accepted at clock edge c delivers its first beat at edge c + READ_LATENCY
// at the earliest (32 cycles by default: about 100 ns of HBM read latency at 300 MHz). Up to
// 2**QDEPTH_LOG2 requests may be outstanding, each timed from its own acceptance, so back-to-back
// bursts (even one-beat ones, as long as QDEPTH >= READ_LATENCY) stream at one beat per cycle.
// rd_data honours ready (backpressure); wr is always ready.
//
// Delivered bandwidth: RATE_BYTES (default DATA_BYTES: a beat every cycle) is what the channel
// behind the port sustains per cycle, for a port wider than its channel delivers (a 512-bit
// Vitis kernel port on a 256-bit HBM pseudo-channel at 300 MHz: 425 GB/s measured over 32
// channels is 44 B per channel-cycle, not 64). A credit grows by RATE_BYTES every cycle, up to
// two beats' worth, and a beat goes only while it holds DATA_BYTES, which it then spends: the
// port delivers RATE_BYTES/DATA_BYTES beats per cycle on average (exactly, over any window of
// (exactly RATE_BYTES/DATA_BYTES beats per cycle over a long burst) and at most two back to back after an idle spell. Writes
// are not throttled (a decode step writes 0.007% of its bytes: one token's keys and values).
//
// Contents: loaded at time 0 by $readmemh from the file named by the plusarg
// +hwflow_mem<PORT>=<path> (one hex line per beat, beat 0 first), so one Verilator build serves
// every memory image. Read-back without Python stepping cycles: while `dump` is high at a clock
// edge, beats [dump_lo, dump_hi] are written by $writememh to <prefix>.r<dump_id>.hex, where
// <prefix> comes from +hwflow_dump<PORT>=<prefix>. Host writes between runs (token ids): while
// `poke` is high at a clock edge, beats [dump_lo, dump_hi] are loaded by $readmemh from
// <prefix>.w<dump_id>.hex (applied after the edge's own accesses; poke while idle).
//
// Accesses beyond DEPTH beats read as zero, are dropped when written, print a message and set the
// sticky `oob` output (the testbench reports it as an error).

`default_nettype none

module ext_memory #(
    parameter integer DATA_BYTES   = 32,
    parameter integer ADDR_BITS    = 24,
    parameter integer DEPTH        = 65536,
    parameter integer READ_LATENCY = 32,
    parameter integer QDEPTH_LOG2  = 6,
    parameter integer PORT         = 0,
    parameter integer RATE_BYTES   = DATA_BYTES
) (
    input  wire                             clk,
    input  wire                             rst,

    input  wire                             rd_req_valid,
    output wire                             rd_req_ready,
    input  wire [ADDR_BITS+15:0]            rd_req_payload,

    output wire                             rd_data_valid,
    input  wire                             rd_data_ready,
    output wire [8*DATA_BYTES-1:0]          rd_data_payload,

    input  wire                             wr_valid,
    output wire                             wr_ready,
    input  wire [ADDR_BITS+8*DATA_BYTES-1:0] wr_payload,

    input  wire                             dump,
    input  wire                             poke,
    input  wire [7:0]                       dump_id,
    input  wire [31:0]                      dump_lo,
    input  wire [31:0]                      dump_hi,

    output reg                              oob,
    output reg  [63:0]                      rd_beats,
    output reg  [63:0]                      wr_beats
);
    localparam integer DW = 8 * DATA_BYTES;
    localparam integer QD = 1 << QDEPTH_LOG2;

    reg [DW-1:0] mem [0:DEPTH-1];

    // ---- contents at time 0 -----------------------------------------------------------------
    string mem_path;
    string dump_prefix;
    initial begin
        oob = 1'b0;
        if ($value$plusargs($sformatf("hwflow_mem%0d=%%s", PORT), mem_path))
            $readmemh(mem_path, mem);
        if (!$value$plusargs($sformatf("hwflow_dump%0d=%%s", PORT), dump_prefix))
            dump_prefix = "";
    end

    // ---- read request queue -----------------------------------------------------------------
    reg [63:0]            now;                       // cycles since reset
    reg [ADDR_BITS-1:0]   q_addr [0:QD-1];
    reg [15:0]            q_len  [0:QD-1];
    reg [63:0]            q_at   [0:QD-1];           // cycle at which the first beat may go
    reg [QDEPTH_LOG2:0]   wptr, rptr;                // one extra bit tells full from empty
    reg [15:0]            bidx;                      // beat of the head request being sent

    wire [QDEPTH_LOG2-1:0] rhead = rptr[QDEPTH_LOG2-1:0];
    wire q_empty = (wptr == rptr);
    wire q_full  = (wptr[QDEPTH_LOG2] != rptr[QDEPTH_LOG2]) &&
                   (wptr[QDEPTH_LOG2-1:0] == rptr[QDEPTH_LOG2-1:0]);

    assign rd_req_ready = !rst && !q_full;
    wire req_fire = rd_req_valid && rd_req_ready;
    wire [ADDR_BITS-1:0] req_addr = rd_req_payload[ADDR_BITS-1:0];
    wire [15:0]          req_len  = rd_req_payload[ADDR_BITS +: 16];

    wire [ADDR_BITS+16:0] rd_addr = {17'd0, q_addr[rhead]} + {{(ADDR_BITS+1){1'b0}}, bidx};
    wire rd_in_range = rd_addr < DEPTH;
    // credit in bytes (throttled ports only; an unthrottled port never waits for it)
    localparam integer CAP = 2 * DATA_BYTES;
    reg [31:0] credit;
    wire has_credit = (RATE_BYTES >= DATA_BYTES) || (credit >= DATA_BYTES);
    assign rd_data_valid   = !q_empty && (now >= q_at[rhead]) && has_credit;
    assign rd_data_payload = rd_in_range ? mem[rd_addr[$clog2(DEPTH)-1:0]] : {DW{1'b0}};
    wire beat_fire = rd_data_valid && rd_data_ready;
    wire last_beat = (bidx == q_len[rhead] - 16'd1);

    // ---- writes -----------------------------------------------------------------------------
    assign wr_ready = !rst;
    wire [ADDR_BITS-1:0] wr_addr = wr_payload[ADDR_BITS-1:0];
    wire [DW-1:0]        wr_data = wr_payload[ADDR_BITS +: DW];

    always @(posedge clk) begin
        if (rst) begin
            now      <= 64'd0;
            wptr     <= '0;
            rptr     <= '0;
            bidx     <= 16'd0;
            credit   <= DATA_BYTES;
            rd_beats <= 64'd0;
            wr_beats <= 64'd0;
        end else begin
            now <= now + 64'd1;
            if (credit + RATE_BYTES - (beat_fire ? DATA_BYTES : 0) > CAP)
                credit <= CAP;
            else
                credit <= credit + RATE_BYTES - (beat_fire ? DATA_BYTES : 0);
            // A zero-length request moves no data; it is accepted and dropped.
            if (req_fire && req_len != 16'd0) begin
                q_addr[wptr[QDEPTH_LOG2-1:0]] <= req_addr;
                q_len [wptr[QDEPTH_LOG2-1:0]] <= req_len;
                q_at  [wptr[QDEPTH_LOG2-1:0]] <= now + READ_LATENCY;
                wptr <= wptr + 1'b1;
            end
            if (beat_fire) begin
                rd_beats <= rd_beats + 64'd1;
                if (!rd_in_range && !oob) begin
                    $display("ext_memory port %0d: read of beat %0d beyond DEPTH=%0d",
                             PORT, rd_addr, DEPTH);
                    oob <= 1'b1;
                end
                if (last_beat) begin
                    bidx <= 16'd0;
                    rptr <= rptr + 1'b1;
                end else begin
                    bidx <= bidx + 16'd1;
                end
            end
            if (wr_valid) begin
                wr_beats <= wr_beats + 64'd1;
                if (wr_addr < DEPTH) begin
                    mem[wr_addr[$clog2(DEPTH)-1:0]] <= wr_data;
                end else if (!oob) begin
                    $display("ext_memory port %0d: write of beat %0d beyond DEPTH=%0d",
                             PORT, wr_addr, DEPTH);
                    oob <= 1'b1;
                end
            end
        end
        if (dump && dump_prefix != "")
            $writememh($sformatf("%s.r%0d.hex", dump_prefix, dump_id), mem, dump_lo, dump_hi);
        if (poke && dump_prefix != "")
            $readmemh($sformatf("%s.w%0d.hex", dump_prefix, dump_id), mem, dump_lo, dump_hi);
    end
endmodule

`default_nettype wire
