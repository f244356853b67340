// Opens shards with llm.c's own DataLoader (llmc/dataloader.h), which checks the header
// (magic 20240520, version 1, token count against the file size) and exits on a mismatch,
// then reads two batches and prints the first tokens. Built and run by check_with_llmc.sh.
#include "llmc/dataloader.h"

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s 'DIR/*train*.bin'\n", argv[0]); return 2; }
    DataLoader loader;
    dataloader_init(&loader, argv[1], 4, 64, 0, 1, 0);
    printf("llm.c DataLoader accepted %s: %zu tokens in %zu shard(s)\n", argv[1], loader.num_tokens,
           (size_t)loader.glob_result.gl_pathc);
    for (int b = 0; b < 2; b++) {
        dataloader_next_batch(&loader);
        printf("batch %d starts with ids %d %d %d %d\n", b, loader.inputs[0], loader.inputs[1], loader.inputs[2], loader.inputs[3]);
    }
    dataloader_free(&loader);
    return 0;
}
