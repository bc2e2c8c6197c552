/* A slow disk for chaos tests, loaded into the engine with LD_PRELOAD: fsync and fdatasync
 * sleep first for the number of milliseconds written in the file that SLOW_FSYNC_CONTROL
 * names (read at every call, so a test slows the disk and speeds it up again while the engine
 * runs), then do the real call. Each call also adds one byte to the file SLOW_FSYNC_COUNT
 * names, so a test can prove the engine's fsyncs went through here.
 *
 * Why a preload rather than a device-mapper "delay" target: it needs no root and no block
 * device, and the engine's store (fjall, through Rust's std) makes its durability calls through
 * libc's fsync/fdatasync. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_ms(void) {
    const char *path = getenv("SLOW_FSYNC_CONTROL");
    if (!path) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

static void slow(void) {
    int saved = errno;
    const char *count = getenv("SLOW_FSYNC_COUNT");
    if (count) {
        int fd = open(count, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            (void)!write(fd, ".", 1);
            close(fd);
        }
    }
    long ms = delay_ms();
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
