/* Intel AMX tile set-up, shared by gemm.c (prefill) and frame.c (batched frame step): every one of
 * the eight tiles configured as 16 rows x 64 bytes (16 x 16 float32 accumulators, 16 x 32 bf16
 * weights, or 16 VNNI pairs x 16 columns of X^T). Tile state is per thread: configure before the
 * first tile instruction on a thread, release after. Only call these after the kernel granted the
 * process tile data (gemm.c's amx_permitted). Include inside an x86-64 guard. */
#ifndef CSM_AMX_H
#define CSM_AMX_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

typedef struct __attribute__((packed)) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

AMX_TARGET static inline void amx_configure(void) {
    TileConfig c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) { c.colsb[i] = 64; c.rows[i] = 16; }
    _tile_loadconfig(&c);
}

AMX_TARGET static inline void amx_release(void) { _tile_release(); }

#endif
