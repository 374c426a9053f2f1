/* A disk that fails on command, for the fault tests: an LD_PRELOAD library that makes write,
 * pwrite, writev, fsync and fdatasync on files whose path starts with $IOSHIM_PREFIX fail with the
 * errno named in the file $IOSHIM_CONTROL ("ENOSPC", "EIO" or "EROFS"). While that file is absent
 * or empty every call goes through to the real disk, so a test fails the disk "once" by writing
 * the file and removing it again, or "forever" by leaving it. Each refused call is counted in
 * $IOSHIM_CONTROL.count of the refusing process (appended, one line per refusal).
 *
 * Build: cc -shared -fPIC -O2 -o libioshim.so ioshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void *next(const char *name) { return dlsym(RTLD_NEXT, name); }

/* The errno to fail this descriptor's call with, or 0 to let it through. */
static int fault_for(int fd) {
    const char *prefix = getenv("IOSHIM_PREFIX");
    const char *control = getenv("IOSHIM_CONTROL");
    if (prefix == NULL || control == NULL || *prefix == '\0') return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    if (strncmp(path, prefix, strlen(prefix)) != 0) return 0;
    int c = open(control, O_RDONLY | O_CLOEXEC);
    if (c < 0) return 0;
    char word[16] = {0};
    ssize_t r = read(c, word, sizeof word - 1);
    close(c);
    if (r <= 0) return 0;
    int err = 0;
    if (strncmp(word, "ENOSPC", 6) == 0) err = ENOSPC;
    else if (strncmp(word, "EROFS", 5) == 0) err = EROFS;
    else if (strncmp(word, "EIO", 3) == 0) err = EIO;
    if (err != 0) {
        char counter[4200];
        snprintf(counter, sizeof counter, "%s.count", control);
        int k = open(counter, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (k >= 0) {
            char line[64];
            int len = snprintf(line, sizeof line, "%d %d\n", (int)getpid(), err);
            if (real_write == NULL) real_write = next("write");
            real_write(k, line, (size_t)len);
            close(k);
        }
    }
    return err;
}

#define REFUSE_OR(fd)                      \
    do {                                   \
        int err_ = fault_for(fd);          \
        if (err_ != 0) {                   \
            errno = err_;                  \
            return -1;                     \
        }                                  \
    } while (0)

ssize_t write(int fd, const void *buf, size_t count) {
    if (real_write == NULL) real_write = next("write");
    REFUSE_OR(fd);
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (real_pwrite == NULL) real_pwrite = next("pwrite");
    REFUSE_OR(fd);
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (real_pwrite64 == NULL) real_pwrite64 = next("pwrite64");
    REFUSE_OR(fd);
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    if (real_writev == NULL) real_writev = next("writev");
    REFUSE_OR(fd);
    return real_writev(fd, iov, iovcnt);
}

int fsync(int fd) {
    if (real_fsync == NULL) real_fsync = next("fsync");
    REFUSE_OR(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (real_fdatasync == NULL) real_fdatasync = next("fdatasync");
    REFUSE_OR(fd);
    return real_fdatasync(fd);
}
