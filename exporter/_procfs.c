/* exporter._procfs: the Linux process walk's reads, compiled (optional; Linux only).
 *
 * Walker(root).scan(max_files) lists the processes of `root` (/proc) and reads each one's
 * name (comm), memory (statm) and parent (stat) the way the Python reader of
 * exporter/collectors/apps.py does (ProcTable; both are tested to read alike), and
 * returns a list of
 *     (pid, parent pid, name, resident pages, resident pages less shared ones)
 * with no memory for kernel threads. The command line and the grouping stay in Python.
 *
 * comm and statm are read through descriptors kept open between scans (as
 * exporter.collectors.base.KeptFiles does): one pread from offset 0 per file instead of an
 * open, a read and a close. stat, which costs the kernel more to write than both, is read
 * when a process is new, and again when its parent has ended (gone, a zombie, or its pid
 * now a newer process's): a parent changes only then, the child going to a reaper. A kept
 * process's name is read again only when its statm changed since the last scan (exec()
 * gives it a new memory map), and at least every NAME_RECHECK-th scan (a rename by prctl()
 * or a write to /proc/PID/comm touches no memory): comm costs the kernel as much as statm,
 * and most processes of a workstation sit idle.
 *
 * Why compiled: on a workstation of 1,150 processes these reads cost the kernel about
 * 2-4 ms a scan, and Python about 6 ms more around them (calls, exception frames, paths,
 * bytes and int objects per file). The reads run without the interpreter lock, so the
 * other collectors' threads go on meanwhile.
 *
 * Kept descriptors: a /proc/PID file stays bound to the process it was opened for; once
 * that process has ended a read fails (ESRCH), even when a newer process has its pid,
 * and the walker opens the files again through the pid's directory (the three files of
 * one process, never a mix of two). Files of processes no longer listed are closed. At
 * most `max_files` descriptors are kept; beyond that, files are opened, read and closed.
 * Every descriptor is close-on-exec. A name is decoded once and the same str returned
 * while the process keeps it (its hash is then computed once, too).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COMM_SIZE 64   /* the kernel writes at most 15 bytes and a newline */
#define STATM_SIZE 256 /* seven numbers */
/* A name is read again when the process's statm changed since the last scan (exec() gives
 * it a new memory map), and otherwise every NAME_RECHECK-th scan (a rename by prctl() or
 * /proc/PID/comm touches no memory): comm costs the kernel as much as statm to write. */
#define NAME_RECHECK 4
#define STAT_SIZE 1024 /* stat's first fields: pid (comm) state ppid pgrp session tty_nr tpgid flags */
#define PF_KTHREAD 0x00200000UL

typedef struct {
    long pid;
    int comm_fd, statm_fd; /* -1: not kept */
    int comm_len;
    char comm[COMM_SIZE];
    PyObject *name; /* str of comm, kept while comm is unchanged; NULL before the first */
    unsigned long long statm_hash; /* of statm's text at the last read: unchanged, the name is too */
    long ppid;          /* from stat: read when the process is new, again when its parent ended */
    char kernel_thread; /* PF_KTHREAD in stat's flags */
    /* this scan's reading */
    unsigned long size, resident, shared;
    char ok, fresh, renamed;
} Entry;

typedef struct {
    PyObject_HEAD
    char *root;
    Entry *entries; /* sorted by pid */
    Py_ssize_t count;
    Py_ssize_t kept;   /* descriptors open */
    Py_ssize_t opened; /* files opened since the walker was made */
    Py_ssize_t names_read; /* comm reads since the walker was made */
    unsigned long scans;
    int busy;
} Walker;

static void close_files(Entry *entry, Py_ssize_t *kept)
{
    if (entry->comm_fd >= 0) {
        close(entry->comm_fd);
        close(entry->statm_fd);
        *kept -= 2;
    }
    entry->comm_fd = entry->statm_fd = -1;
}

/* Parse statm's first three numbers; 0 when it is not "N N N ...". */
static int parse_statm(const char *text, Entry *entry)
{
    unsigned long values[3];
    const char *at = text;
    for (int i = 0; i < 3; i++) {
        char *end;
        if (*at < '0' || *at > '9')
            return 0;
        errno = 0;
        values[i] = strtoul(at, &end, 10);
        if (errno != 0 || (*end != ' ' && *end != '\n' && *end != '\0'))
            return 0;
        at = *end == ' ' ? end + 1 : end;
    }
    entry->size = values[0];
    entry->resident = values[1];
    entry->shared = values[2];
    return 1;
}

/* Parse stat's parent and kernel-thread flag into entry; 0 when it is not stat's format. */
static int parse_stat(char *text, Entry *entry)
{
    char *at = strrchr(text, ')'), *end;
    if (at == NULL || at[1] != ' ')
        return 0;
    at += 2;
    for (int field = 0; field < 6; field++) { /* state ppid pgrp session tty_nr tpgid, then flags */
        if (field == 1) {
            errno = 0;
            long ppid = strtol(at, &end, 10);
            if (end == at || *end != ' ' || errno != 0 || ppid < 0)
                return 0;
            entry->ppid = ppid;
        }
        at = strchr(at, ' ');
        if (at == NULL)
            return 0;
        at++;
    }
    errno = 0;
    unsigned long flags = strtoul(at, &end, 10);
    if (end == at || errno != 0)
        return 0;
    entry->kernel_thread = (flags & PF_KTHREAD) != 0;
    return 1;
}

/* Read stat (of `folder`, a descriptor of the process's directory, or by path when it is
 * -1) into entry; 0 when it cannot be read (the process has ended). */
static int read_parent(Walker *self, Entry *entry, int folder)
{
    char text[STAT_SIZE];
    int fd;
    if (folder >= 0) {
        fd = openat(folder, "stat", O_RDONLY | O_CLOEXEC);
    } else {
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%ld/stat", self->root, entry->pid) >= (int)sizeof path)
            return 0;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return 0;
    self->opened++;
    ssize_t length = pread(fd, text, sizeof text - 1, 0);
    close(fd);
    if (length <= 0)
        return 0;
    text[length] = '\0';
    return parse_stat(text, entry);
}

/* Open a process's comm and statm and read its stat through its directory: all three of
 * the same process. */
static int open_files(Walker *self, Entry *entry, int *comm_fd, int *statm_fd)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%ld", self->root, entry->pid) >= (int)sizeof path)
        return 0;
    int folder = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (folder < 0)
        return 0;
    *comm_fd = openat(folder, "comm", O_RDONLY | O_CLOEXEC);
    *statm_fd = *comm_fd < 0 ? -1 : openat(folder, "statm", O_RDONLY | O_CLOEXEC);
    self->opened += 1 + (*comm_fd >= 0) + (*statm_fd >= 0);
    int parent = *statm_fd >= 0 && read_parent(self, entry, folder);
    close(folder);
    if (!parent) {
        if (*comm_fd >= 0)
            close(*comm_fd);
        if (*statm_fd >= 0)
            close(*statm_fd);
        return 0;
    }
    return 1;
}

static unsigned long long text_hash(const char *text, ssize_t length)
{
    unsigned long long hash = 14695981039346656037ULL; /* FNV-1a */
    for (ssize_t i = 0; i < length; i++)
        hash = (hash ^ (unsigned char)text[i]) * 1099511628211ULL;
    return hash;
}

/* Read one process (no interpreter lock held). Sets entry->ok. */
static void read_entry(Walker *self, Entry *entry, Py_ssize_t max_files)
{
    char comm[COMM_SIZE], statm[STATM_SIZE];
    ssize_t comm_len = -1, statm_len = -1;
    unsigned long long hash = 0;

    entry->ok = entry->fresh = entry->renamed = 0;
    if (entry->comm_fd >= 0) {
        statm_len = pread(entry->statm_fd, statm, sizeof statm - 1, 0);
        if (statm_len >= 0) {
            hash = text_hash(statm, statm_len);
            if (hash != entry->statm_hash || (entry->pid + self->scans) % NAME_RECHECK == 0) {
                comm_len = pread(entry->comm_fd, comm, sizeof comm, 0);
                self->names_read += comm_len >= 0;
            } else {
                comm_len = -2; /* the name it had */
            }
        }
        if (statm_len < 0 || comm_len == -1) /* ESRCH: it has ended; its pid may name a newer one */
            close_files(entry, &self->kept);
    }
    if (entry->comm_fd < 0) {
        int comm_fd, statm_fd;
        entry->fresh = 1;
        if (!open_files(self, entry, &comm_fd, &statm_fd))
            return; /* ended since it was listed */
        comm_len = pread(comm_fd, comm, sizeof comm, 0);
        statm_len = comm_len < 0 ? -1 : pread(statm_fd, statm, sizeof statm - 1, 0);
        self->names_read += comm_len >= 0;
        if (comm_len >= 0 && statm_len >= 0 && self->kept + 2 <= max_files) {
            entry->comm_fd = comm_fd;
            entry->statm_fd = statm_fd;
            self->kept += 2;
        } else {
            close(comm_fd);
            close(statm_fd);
        }
        if (comm_len < 0 || statm_len < 0)
            return;
        hash = text_hash(statm, statm_len);
    }
    statm[statm_len] = '\0';
    if (!parse_statm(statm, entry))
        return;
    entry->statm_hash = hash;
    if (comm_len >= 0) {
        if (comm_len > 0 && comm[comm_len - 1] == '\n')
            comm_len--;
        if (entry->name == NULL || comm_len != entry->comm_len || memcmp(comm, entry->comm, comm_len) != 0) {
            memcpy(entry->comm, comm, comm_len);
            entry->comm_len = (int)comm_len;
            entry->renamed = 1;
        }
    }
    entry->ok = 1;
}

static int by_pid(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The pids listed in root, sorted; errno set and -1 on failure. */
static Py_ssize_t list_pids(const char *root, long **out)
{
    DIR *folder = opendir(root);
    if (folder == NULL)
        return -1;
    Py_ssize_t count = 0, capacity = 1024;
    long *pids = malloc(capacity * sizeof *pids);
    struct dirent *item;
    while (pids != NULL && (item = readdir(folder)) != NULL) {
        const char *name = item->d_name;
        if (*name < '0' || *name > '9')
            continue;
        char *end;
        long pid = strtol(name, &end, 10);
        if (*end != '\0' || pid <= 0)
            continue;
        if (count == capacity) {
            long *more = realloc(pids, 2 * capacity * sizeof *pids);
            if (more == NULL) {
                free(pids);
                pids = NULL;
                break;
            }
            pids = more;
            capacity *= 2;
        }
        pids[count++] = pid;
    }
    closedir(folder);
    if (pids == NULL) {
        errno = ENOMEM;
        return -1;
    }
    qsort(pids, count, sizeof *pids, by_pid);
    *out = pids;
    return count;
}

static Entry *find(Entry *entries, Py_ssize_t count, long pid)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (entries[middle].pid < pid)
            low = middle + 1;
        else
            high = middle;
    }
    return low < count && entries[low].pid == pid ? &entries[low] : NULL;
}

static PyObject *Walker_scan(Walker *self, PyObject *arg)
{
    Py_ssize_t max_files = PyLong_AsSsize_t(arg);
    if (max_files == -1 && PyErr_Occurred())
        return NULL;
    if (self->root == NULL) {
        PyErr_SetString(PyExc_ValueError, "the walker is closed");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the walker is scanning in another thread");
        return NULL;
    }
    self->busy = 1;

    long *pids = NULL;
    Entry *entries = NULL;
    PyObject **gone = NULL;
    Py_ssize_t count = -1, gone_count = 0;
    int error = 0;

    Py_BEGIN_ALLOW_THREADS
    count = list_pids(self->root, &pids);
    if (count < 0) {
        error = errno;
    } else {
        entries = malloc((count ? count : 1) * sizeof *entries);
        gone = malloc((self->count ? self->count : 1) * sizeof *gone);
        if (entries == NULL || gone == NULL) {
            error = ENOMEM;
        } else {
            /* Merge the new listing with the entries of the last scan (both sorted). */
            Py_ssize_t old = 0;
            for (Py_ssize_t i = 0; i < count; i++) {
                while (old < self->count && self->entries[old].pid < pids[i]) {
                    close_files(&self->entries[old], &self->kept);
                    gone[gone_count++] = self->entries[old++].name;
                }
                if (old < self->count && self->entries[old].pid == pids[i]) {
                    entries[i] = self->entries[old++];
                } else {
                    memset(&entries[i], 0, sizeof entries[i]);
                    entries[i].pid = pids[i];
                    entries[i].comm_fd = entries[i].statm_fd = -1;
                }
                read_entry(self, &entries[i], max_files);
            }
            while (old < self->count) {
                close_files(&self->entries[old], &self->kept);
                gone[gone_count++] = self->entries[old++].name;
            }
            /* A process's parent changes only when the parent ends (the child goes to a
             * reaper): read stat again where the parent is gone, a zombie, or new under its pid. */
            for (Py_ssize_t i = 0; i < count; i++) {
                Entry *entry = &entries[i];
                if (!entry->ok || entry->fresh || entry->ppid == 0)
                    continue;
                Entry *parent = find(entries, count, entry->ppid);
                if (parent == NULL || !parent->ok || parent->fresh || (parent->size == 0 && !parent->kernel_thread))
                    read_parent(self, entry, -1); /* on failure it has just ended: its last parent stays */
            }
        }
    }
    Py_END_ALLOW_THREADS

    self->scans++;
    free(pids);
    if (error) {
        free(entries);
        free(gone);
        self->busy = 0;
        if (error == ENOMEM)
            return PyErr_NoMemory();
        errno = error;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, self->root);
    }
    for (Py_ssize_t i = 0; i < gone_count; i++)
        Py_XDECREF(gone[i]);
    free(gone);
    free(self->entries);
    self->entries = entries;
    self->count = count;

    /* Names, the result, and the entries of processes that ended mid-scan dropped. */
    PyObject *result = PyList_New(0);
    Py_ssize_t live = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Entry *entry = &entries[i];
        if (entry->ok && (entry->renamed || entry->name == NULL)) {
            /* After a failure, no more calls into Python: the renamed are dropped (read afresh next time). */
            PyObject *name = result == NULL ? NULL : PyUnicode_DecodeUTF8(entry->comm, entry->comm_len, "surrogateescape");
            if (name == NULL) {
                Py_CLEAR(result);
                entry->ok = 0;
            } else {
                Py_XSETREF(entry->name, name);
            }
        }
        if (!entry->ok || entry->name == NULL) {
            close_files(entry, &self->kept);
            Py_CLEAR(entry->name);
            continue;
        }
        if (result != NULL) {
            unsigned long resident = entry->kernel_thread ? 0 : entry->resident;
            unsigned long anonymous = resident > entry->shared ? resident - entry->shared : 0;
            PyObject *item = Py_BuildValue("(llOkk)", entry->pid, entry->ppid, entry->name, resident, anonymous);
            if (item == NULL || PyList_Append(result, item) < 0)
                Py_CLEAR(result);
            Py_XDECREF(item);
        }
        entries[live++] = *entry;
    }
    self->count = live;
    self->busy = 0;
    return result;
}

static void walker_clear(Walker *self)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        close_files(&self->entries[i], &self->kept);
        Py_CLEAR(self->entries[i].name);
    }
    free(self->entries);
    self->entries = NULL;
    self->count = 0;
}

static PyObject *Walker_close(Walker *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the walker is scanning in another thread");
        return NULL;
    }
    walker_clear(self);
    Py_RETURN_NONE;
}

static Py_ssize_t Walker_len(Walker *self)
{
    return self->kept;
}

static int Walker_init(Walker *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"root", NULL};
    const char *root;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s", keywords, &root))
        return -1;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the walker is scanning in another thread");
        return -1;
    }
    char *copy = strdup(root);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    walker_clear(self);
    free(self->root);
    self->root = copy;
    return 0;
}

static void Walker_dealloc(Walker *self)
{
    walker_clear(self);
    free(self->root);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Walker_methods[] = {
    {"scan", (PyCFunction)Walker_scan, METH_O,
     "scan(max_files) -> [(pid, ppid, name, resident, anonymous)]: every process's parent, name and memory "
     "(pages: resident, and resident less shared), through descriptors kept open between scans (at most "
     "max_files)."},
    {"close", (PyCFunction)Walker_close, METH_NOARGS, "Close every kept descriptor."},
    {NULL},
};

static PyMemberDef Walker_members[] = {
    {"opened", T_PYSSIZET, offsetof(Walker, opened), READONLY, "How many files it has opened (directories included)."},
    {"names_read", T_PYSSIZET, offsetof(Walker, names_read), READONLY, "How many times it has read a name (comm)."},
    {NULL},
};

static PySequenceMethods Walker_as_sequence = {
    .sq_length = (lenfunc)Walker_len,
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exporter._procfs.Walker",
    .tp_doc = "Walker(root): the processes of root (/proc), read through kept descriptors; len() is "
              "how many descriptors it keeps open.",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walker_init,
    .tp_dealloc = (destructor)Walker_dealloc,
    .tp_methods = Walker_methods,
    .tp_members = Walker_members,
    .tp_as_sequence = &Walker_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exporter._procfs",
    .m_doc = "The Linux process walk's reads of /proc, compiled (see exporter/collectors/apps.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__procfs(void)
{
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "NAME_RECHECK", NAME_RECHECK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
