// zstd's one-shot and streaming API, used by the checkpoint writer.
#include <zstd.h>
