/* nbpipeline's file-access shim: LD_PRELOADed into a stage's kernel (see trace.py).
 *
 * Every process of the kernel's tree loads it (children inherit LD_PRELOAD), so it sees
 * the files that the stage's own code opens, renames and deletes: Python's open(), C/C++
 * readers such as pyarrow, and subprocesses. Other processes never load it, so what an
 * editor, JupyterLab or a shell does in the project is never attributed to the stage.
 *
 * Only paths under $NBP_TRACE_ROOT are recorded, one line each, appended with a single
 * write() to $NBP_TRACE_LOG:  "<kind> <absolute path>\n", kind R read, W opened for
 * writing, C created, D deleted (unlink, rename source), N renamed into place; and
 * "S <pid>" when a process starts with the shim loaded.
 * The shim never changes what a call does or returns, and keeps errno.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int log_fd = -1;
static dev_t log_dev;
static ino_t log_ino;
static char root[PATH_MAX];
static size_t root_len;

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*renameat_fn)(int, const char *, int, const char *);
typedef int (*renameat2_fn)(int, const char *, int, const char *, unsigned int);
typedef int (*unlink_fn)(const char *);
typedef int (*unlinkat_fn)(int, const char *, int);

#define REAL(name, type, failed) \
    static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name); \
    if (!real_##name) { errno = ENOSYS; return failed; }

__attribute__((constructor)) static void nbp_trace_init(void) {
    const char *log = getenv("NBP_TRACE_LOG");
    const char *top = getenv("NBP_TRACE_ROOT");
    struct stat st;
    if (!log || !top || strlen(top) >= sizeof(root) - 1) return;
    open_fn real_open = (open_fn)dlsym(RTLD_NEXT, "open");
    if (!real_open) return;
    int fd = real_open(log, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) return;
    strcpy(root, top);
    root_len = strlen(root);
    while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = '\0';
    log_dev = st.st_dev;
    log_ino = st.st_ino;
    log_fd = fd;
    char line[32];  /* "S <pid>": this process is traced (tells the tracer the shim loaded) */
    int n = snprintf(line, sizeof(line), "S %d\n", (int)getpid());
    if (n > 0 && write(fd, line, (size_t)n) < 0) log_fd = -1;
}

/* The absolute form of (dirfd, path) in buf; 0 if it cannot be told. */
static int absolute(int dirfd, const char *path, char *buf, size_t size) {
    char base[PATH_MAX];
    if (!path) return 0;
    if (path[0] == '/') {
        if (strlen(path) >= size) return 0;
        strcpy(buf, path);
        return 1;
    }
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof(base))) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof(base) - 1);
        if (n <= 0) return 0;
        base[n] = '\0';
    }
    return snprintf(buf, size, "%s/%s", base, path) < (int)size;
}

static int in_root(const char *abs) {
    return strncmp(abs, root, root_len) == 0 && (abs[root_len] == '/' || root_len == 1);
}

static void record(char kind, int dirfd, const char *path) {
    char abs[PATH_MAX], line[PATH_MAX + 4];
    struct stat st;
    if (log_fd < 0) return;
    int saved = errno;
    if (absolute(dirfd, path, abs, sizeof(abs)) && in_root(abs)
        /* a process that closed all fds may have reused the number for a file of its own */
        && fstat(log_fd, &st) == 0 && st.st_dev == log_dev && st.st_ino == log_ino) {
        int n = snprintf(line, sizeof(line), "%c %s\n", kind, abs);
        if (n > 0 && n < (int)sizeof(line)) {
            ssize_t ignored = write(log_fd, line, (size_t)n);
            (void)ignored;
        }
    }
    errno = saved;
}

static int exists(int dirfd, const char *path) {
    struct stat st;
    int saved = errno;
    int found = fstatat(dirfd, path, &st, 0) == 0;
    errno = saved;
    return found;
}

static void opened(int fd, int dirfd, const char *path, int flags, int existed) {
    struct stat st;
    if (fd < 0 || log_fd < 0) return;
    if ((flags & O_ACCMODE) == O_RDONLY && !(flags & (O_CREAT | O_TRUNC))) {
        int saved = errno;
        int is_dir = (flags & O_DIRECTORY) || (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode));
        errno = saved;
        if (!is_dir) record('R', dirfd, path);
        return;
    }
    record(existed ? 'W' : 'C', dirfd, path);
}

static int wants_create(int flags) { return (flags & O_CREAT) != 0; }

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); \
        mode = (mode_t)va_arg(ap, int); va_end(ap); }

#define OPEN_WRAPPER(name) \
    int name(const char *path, int flags, ...) { \
        MODE_ARG(flags) \
        REAL(name, open_fn, -1); \
        int existed = log_fd >= 0 && wants_create(flags) ? exists(AT_FDCWD, path) : 1; \
        int fd = real_##name(path, flags, mode); \
        opened(fd, AT_FDCWD, path, flags, existed); \
        return fd; \
    }

#define OPENAT_WRAPPER(name) \
    int name(int dirfd, const char *path, int flags, ...) { \
        MODE_ARG(flags) \
        REAL(name, openat_fn, -1); \
        int existed = log_fd >= 0 && wants_create(flags) ? exists(dirfd, path) : 1; \
        int fd = real_##name(dirfd, path, flags, mode); \
        opened(fd, dirfd, path, flags, existed); \
        return fd; \
    }

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

/* Fortified callers (-D_FORTIFY_SOURCE) use these two-argument forms. */
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) {
    return openat64(dirfd, path, flags);
}

int creat(const char *path, mode_t mode) {
    return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

int creat64(const char *path, mode_t mode) {
    return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

#define FOPEN_WRAPPER(name) \
    FILE *name(const char *path, const char *mode) { \
        REAL(name, fopen_fn, NULL); \
        int writes = mode && (strchr(mode, 'w') || strchr(mode, 'a') || strchr(mode, '+')); \
        int existed = log_fd >= 0 && writes ? exists(AT_FDCWD, path) : 1; \
        FILE *f = real_##name(path, mode); \
        if (f) opened(fileno(f), AT_FDCWD, path, writes ? O_WRONLY | O_CREAT : O_RDONLY, \
                      existed); \
        return f; \
    }

FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)

int rename(const char *from, const char *to) {
    REAL(rename, rename_fn, -1);
    int rc = real_rename(from, to);
    if (rc == 0) { record('D', AT_FDCWD, from); record('N', AT_FDCWD, to); }
    return rc;
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    REAL(renameat, renameat_fn, -1);
    int rc = real_renameat(fromfd, from, tofd, to);
    if (rc == 0) { record('D', fromfd, from); record('N', tofd, to); }
    return rc;
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    REAL(renameat2, renameat2_fn, -1);
    int rc = real_renameat2(fromfd, from, tofd, to, flags);
    if (rc == 0) { record('D', fromfd, from); record('N', tofd, to); }
    return rc;
}

int unlink(const char *path) {
    REAL(unlink, unlink_fn, -1);
    int rc = real_unlink(path);
    if (rc == 0) record('D', AT_FDCWD, path);
    return rc;
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat, unlinkat_fn, -1);
    int rc = real_unlinkat(dirfd, path, flags);
    if (rc == 0 && !(flags & AT_REMOVEDIR)) record('D', dirfd, path);
    return rc;
}
