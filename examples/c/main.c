/* Runs the bundled MLP (examples/mlp/model.onnx) from C, linked statically:
 *
 *   kiln compile examples/mlp/model.onnx --emit staticlib --name mlp -o libmlp.a
 *   kiln compile examples/mlp/model.onnx --emit header --name mlp -o mlp.h
 *   cc -std=c11 -I. examples/c/main.c -L. -lmlp -lm -o mlp
 *   ./mlp examples/mlp/input.npy out.bin
 *
 * reads the input from a little-endian float32 .npy file, runs the model on this thread and
 * writes the output's raw bytes (float32, little-endian) to the second file. Nothing but the
 * static library and the header: no runtime, no model file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

/* The data of a version 1 or 2 .npy file of exactly `want` bytes, or NULL. */
static void *read_npy(const char *path, size_t want) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char head[12];
    void *data = NULL;
    if (fread(head, 1, 10, f) == 10 && memcmp(head, "\x93NUMPY", 6) == 0) {
        long header_len = head[8] | (head[9] << 8);
        if (head[6] >= 2 && fread(head + 10, 1, 2, f) == 2) {
            header_len |= ((long)head[10] << 16) | ((long)head[11] << 24);
        }
        data = malloc(want ? want : 1);
        if (fseek(f, header_len, SEEK_CUR) != 0 || fread(data, 1, want, f) != want) {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.npy OUTPUT.bin\n", argv[0]);
        return 2;
    }
    void *x = read_npy(argv[1], MLP_INPUT_0_BYTES);
    if (!x) {
        fprintf(stderr, "%s: not a .npy file of %u bytes of data (input `%s`)\n", argv[1], MLP_INPUT_0_BYTES,
                MLP_INPUT_0_NAME);
        return 1;
    }
    size_t arena_bytes = (MLP_ARENA_BYTES + 63) / 64 * 64;
    void *arena = aligned_alloc(64, arena_bytes ? arena_bytes : 64);
    void *y = malloc(MLP_OUTPUT_0_BYTES);
    const void *inputs[MLP_NUM_INPUTS] = {x};
    void *outputs[MLP_NUM_OUTPUTS] = {y};
    int32_t status = mlp_run(inputs, outputs, arena);
    if (status != 0) {
        const char *why = status > 0 && status <= MLP_NUM_CHECKS ? mlp_check_messages[status - 1] : "an unknown failure";
        fprintf(stderr, "the model reported: %s\n", why);
        return 1;
    }
    const mlp_output_0_t *out = y;
    printf("%s[0..%d]:", MLP_OUTPUT_0_NAME, MLP_OUTPUT_0_ELEMENTS < 4 ? (int)MLP_OUTPUT_0_ELEMENTS : 4);
    for (unsigned i = 0; i < MLP_OUTPUT_0_ELEMENTS && i < 4; i++) printf(" %g", out[i]);
    printf("\n");
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(y, 1, MLP_OUTPUT_0_BYTES, f) != MLP_OUTPUT_0_BYTES || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    free(x);
    free(y);
    free(arena);
    return 0;
}
