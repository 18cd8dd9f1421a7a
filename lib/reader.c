/* reader.c - placeholder until the read side lands (issue 4). */
#include <errno.h>

#include "error.h"
#include "reader.h"

int reader_open(const char *path, const char *format, int direct, struct reader **out)
{
    (void)format; (void)direct; *out = 0;
    return zerr(ENOTSUP, "cannot open '%s': reading images is not built yet", path);
}
int reader_read(struct reader *r, uint64_t o, void *b, size_t l) { (void)r; (void)o; (void)b; (void)l; return -ENOTSUP; }
int reader_cluster_info(struct reader *r, uint64_t o, struct zcow_cluster_info *i) { (void)r; (void)o; (void)i; return -ENOTSUP; }
int reader_read_compressed(struct reader *r, const struct zcow_cluster_info *i, void *b, size_t c) { (void)r; (void)i; (void)b; (void)c; return -ENOTSUP; }
int reader_get_info(struct reader *r, struct zcow_info *i) { (void)r; (void)i; return -ENOTSUP; }
void reader_close(struct reader *r) { (void)r; }
