/*
 * postern - run the whole relay from one config: `postern run`.
 *
 * Validates the config and takes the spool's lock (one `postern run` per
 * spool), starts each daemon as a child, restarts a child that dies
 * (waiting longer after each quick death, so a crash loop does not spin)
 * unless it exits with a permanent start error (common/daemon.h: exit 2
 * or 3), which stops everything and makes us exit with its status; on
 * SIGTERM/SIGINT stops them in two steps: ingest, transforms and senders
 * first, the dispatcher last, since it records what the others report on
 * their way out.  Each step passes SIGTERM on, waits for the children to
 * finish what they hold, and kills what is left after STOP_GRACE.
 */
#include "common/approval_code.h"
#include "common/config.h"
#include "common/clock.h"
#include "common/daemon.h"
#include "common/log.h"
#include "spool/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#define RESTART_MIN 1               /* seconds before the first restart */
#define RESTART_MAX 60
#define STABLE_AFTER 60             /* a child up this long resets its backoff */
#define LOCK_FILE "postern.lock"    /* in the spool: held by the one `postern run` */
#define STOP_GRACE 360              /* seconds between SIGTERM and SIGKILL, per stop
                                       step: a sender's last SMTP transaction may wait
                                       one [relay] timeout (5m); docs/man/postern.8 and
                                       packaging/systemd/postern.service say the same */

/*
 * Stop steps.  A sender's results reach the spool only through the
 * dispatcher: stopped together, a sender finishing its transaction would
 * report to nobody, its leases would expire, and the mail be sent twice.
 */
enum stop_step {
    STOP_NOT,                       /* running */
    STOP_WORKERS,                   /* ingest, transforms, senders */
    STOP_DISPATCHER,
    STOP_DONE,
};

struct child {
    struct supervisor *sup;
    char *name;                     /* postern-ingest, postern-sender#2, ... */
    char **argv;
    enum stop_step stop_step;       /* the step that stops it */
    GPid pid;
    int64_t started;                /* monotonic seconds */
    unsigned backoff;
    guint restart_source;
};

struct supervisor {
    GMainLoop *loop;
    GPtrArray *children;
    enum stop_step stopping;
    guint kill_source;              /* SIGKILLs the step's leftovers */
    int exit_status;                /* ours: a child's permanent start error, or 0 */
};

static void child_start(struct child *c);
static void postern_stop_step(struct supervisor *sup);
static void postern_stop_all(struct supervisor *sup);

static gboolean child_restart(gpointer data)
{
    struct child *c = data;

    c->restart_source = 0;
    child_start(c);
    return G_SOURCE_REMOVE;
}

static void child_exited(GPid pid, gint status, gpointer data)
{
    struct child *c = data;
    struct supervisor *sup = c->sup;
    int64_t up = mono_ms() / 1000 - c->started;

    g_spawn_close_pid(pid);
    c->pid = 0;
    if (sup->stopping) {
        msg_info("%s stopped (pid %d)", c->name, pid);
        postern_stop_step(sup);
        return;
    }
    if (WIFSIGNALED(status))
        msg_warn("%s (pid %d) killed by signal %d", c->name, pid, WTERMSIG(status));
    else
        msg_warn("%s (pid %d) exited with status %d", c->name, pid, WEXITSTATUS(status));

    /*
     * A config it refuses or a start error it calls permanent (an address
     * in use) would come back at every restart: stop everything, so the
     * operator sees the error instead of a restart loop.
     */
    if (WIFEXITED(status) && (WEXITSTATUS(status) == CONFIG_EXIT_USAGE ||
                              WEXITSTATUS(status) == DAEMON_EXIT_START)) {
        msg_error("%s cannot start (exit status %d, its error is logged above): stopping "
                  "everything", c->name, WEXITSTATUS(status));
        sup->exit_status = WEXITSTATUS(status);
        postern_stop_all(sup);
        return;
    }

    c->backoff = up >= STABLE_AFTER ? RESTART_MIN : MIN(MAX(c->backoff * 2, RESTART_MIN), RESTART_MAX);
    msg_info("restarting %s in %us", c->name, c->backoff);
    c->restart_source = g_timeout_add_seconds(c->backoff, child_restart, c);
}

static void child_start(struct child *c)
{
    GError *err = NULL;

    if (!g_spawn_async(NULL, c->argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &c->pid,
                       &err)) {
        msg_warn("cannot start %s: %s", c->argv[0], err->message);
        g_error_free(err);
        c->backoff = MIN(MAX(c->backoff * 2, RESTART_MIN), RESTART_MAX);
        c->restart_source = g_timeout_add_seconds(c->backoff, child_restart, c);
        return;
    }
    c->started = mono_ms() / 1000;
    g_child_watch_add(c->pid, child_exited, c);
    msg_info("started %s (pid %d)", c->name, c->pid);
}

/*
 * Find a daemon: beside this program when installed, in its folder of
 * the build tree when run from there.
 */
static char *postern_find(const char *self_dir, const char *folder, const char *program)
{
    g_autofree char *beside = g_build_filename(self_dir, program, NULL);
    g_autofree char *in_tree = g_build_filename(self_dir, "..", folder, program, NULL);

    if (g_file_test(beside, G_FILE_TEST_IS_EXECUTABLE))
        return g_steal_pointer(&beside);
    if (g_file_test(in_tree, G_FILE_TEST_IS_EXECUTABLE))
        return g_steal_pointer(&in_tree);
    return g_find_program_in_path(program);
}

static void postern_add(struct supervisor *sup, const char *self_dir, const char *folder,
                        const char *program, const char *name, const char *config,
                        gboolean foreground, const char *extra_arg, enum stop_step stop_step)
{
    struct child *c = g_new0(struct child, 1);
    GPtrArray *argv = g_ptr_array_new();
    char *path = postern_find(self_dir, folder, program);

    if (!path)
        msg_fatal("%s: not found beside %s or in PATH", program, self_dir);
    g_ptr_array_add(argv, path);
    if (config) {
        g_ptr_array_add(argv, g_strdup("-c"));
        g_ptr_array_add(argv, g_strdup(config));
    }
    if (foreground)
        g_ptr_array_add(argv, g_strdup("-f"));
    if (extra_arg)
        g_ptr_array_add(argv, g_strdup(extra_arg));
    g_ptr_array_add(argv, NULL);
    c->sup = sup;
    c->name = g_strdup(name);
    c->argv = (char **)g_ptr_array_free(argv, FALSE);
    c->stop_step = stop_step;
    g_ptr_array_add(sup->children, c);
}

static gboolean postern_kill_rest(gpointer data)
{
    struct supervisor *sup = data;

    sup->kill_source = 0;
    for (guint i = 0; i < sup->children->len; i++) {
        struct child *c = sup->children->pdata[i];
        if (c->pid && c->stop_step == sup->stopping) {
            msg_warn("%s (pid %d) did not stop in %ds: killing it", c->name, c->pid, STOP_GRACE);
            kill(c->pid, SIGKILL);
        }
    }
    return G_SOURCE_REMOVE;
}

/*
 * Go on stopping: once no child of the current step runs, pass SIGTERM
 * to the children of the next step that has any; quit after the last.
 */
static void postern_stop_step(struct supervisor *sup)
{
    for (guint i = 0; i < sup->children->len; i++) {
        struct child *c = sup->children->pdata[i];
        if (c->pid && c->stop_step == sup->stopping)
            return;
    }
    if (sup->kill_source)
        g_source_remove(sup->kill_source);
    sup->kill_source = 0;
    while (++sup->stopping < STOP_DONE) {
        unsigned n = 0;

        for (guint i = 0; i < sup->children->len; i++) {
            struct child *c = sup->children->pdata[i];
            if (c->pid && c->stop_step == sup->stopping) {
                kill(c->pid, SIGTERM);
                n++;
            }
        }
        if (n) {
            msg_info("stopping: passed SIGTERM to %u %s", n,
                     sup->stopping == STOP_WORKERS ? "workers" : "dispatcher");
            sup->kill_source = g_timeout_add_seconds(STOP_GRACE, postern_kill_rest, sup);
            return;
        }
    }
    g_main_loop_quit(sup->loop);
}

/* Cancel pending restarts and begin the stop steps. */
static void postern_stop_all(struct supervisor *sup)
{
    for (guint i = 0; i < sup->children->len; i++) {
        struct child *c = sup->children->pdata[i];
        if (c->restart_source)
            g_source_remove(c->restart_source);
        c->restart_source = 0;
    }
    postern_stop_step(sup);
}

/* SIGTERM or SIGINT, through the signal pipe (common/daemon.h). */
static gboolean postern_stop(int fd, GIOCondition cond, gpointer data)
{
    struct supervisor *sup = data;
    int sig = daemon_signal_read(fd);

    if (!sig || sup->stopping)
        return G_SOURCE_CONTINUE;
    msg_info("stopping on signal %d", sig);
    postern_stop_all(sup);
    return G_SOURCE_CONTINUE;
}

/*
 * One supervisor per spool: a second one would start a second set of
 * daemons on the same spool (two dispatchers leasing the same work).  The
 * lock is an flock() on a file in the spool, held for our life and freed
 * by the kernel when we die, however we die; our children do not inherit
 * it (close-on-exec), so a killed supervisor frees the spool at once.
 * The holder's pid is written into the file for the error message.
 */
static int postern_lock(const struct postern_config *cfg)
{
    g_autofree char *path = config_spool_path(cfg, LOCK_FILE);
    g_autofree char *pid = g_strdup_printf("%d\n", (int)getpid());
    char holder[32] = "";
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    ssize_t n;

    if (fd < 0)
        daemon_start_fail("%s: %s", path, g_strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            daemon_start_fail("%s: flock: %s", path, g_strerror(errno));
        n = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[MAX(n, 0)] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        daemon_start_fail("spool %s is in use by another postern run (pid %s; lock %s)",
                          cfg->spool.dir, *holder ? holder : "?", path);
    }
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, strlen(pid), 0) < 0)
        msg_warn("%s: cannot write our pid: %s", path, g_strerror(errno));
    return fd;
}

static int postern_run(const char *config, gboolean use_syslog)
{
    struct postern_config cfg;
    struct supervisor sup = { 0 };
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *self_dir = g_path_get_dirname(self ? self : ".");
    struct spool *sp;
    GError *err = NULL;
    int lock_fd;
    uint64_t transforms;

    /* The whole config, before any child starts (config.h). */
    config_load_valid_or_exit(&cfg, config);

    /* Create the spool before the children race to do it. */
    if (!spool_open(&sp, &cfg, &err))
        daemon_start_fail("%s", err->message);
    spool_close(sp);
    lock_fd = postern_lock(&cfg);

    sup.loop = g_main_loop_new(NULL, FALSE);
    sup.children = g_ptr_array_new();
    postern_add(&sup, self_dir, "ingest", "postern-ingest", "postern-ingest", config, !use_syslog,
                NULL, STOP_WORKERS);
    postern_add(&sup, self_dir, "dispatch", "postern-dispatch", "postern-dispatch", config,
                !use_syslog, NULL, STOP_DISPATCHER);
    /*
     * A transform worker signs one message at a time on one core (its
     * threads are for sends of hundreds of copies), so the cores fill
     * with workers: [workers] transforms = 0 is one per CPU.
     */
    transforms = cfg.workers.transforms ? cfg.workers.transforms : g_get_num_processors();
    for (uint64_t i = 0; i < transforms; i++) {
        g_autofree char *name = g_strdup_printf("postern-transform#%" G_GUINT64_FORMAT, i + 1);
        postern_add(&sup, self_dir, "transform", "postern-transform", name, config, !use_syslog,
                    NULL, STOP_WORKERS);
    }
    for (uint64_t i = 0; i < cfg.workers.count; i++) {
        g_autofree char *name = g_strdup_printf("postern-sender#%" G_GUINT64_FORMAT, i + 1);
        /* Senders here are on the dispatcher's host: its ipc socket, no CURVE keys. */
        postern_add(&sup, self_dir, "sender", "postern-sender", name, config, !use_syslog,
                    "--local", STOP_WORKERS);
    }
    /*
     * The API only with keys to check ([api] keys_file): without, it could
     * only refuse.  Or with outcome events to post ([events] url): else the
     * outbox would only grow.  Or with links in the mail that lead to it:
     * one-click unsubscribe, a moderator's approval.
     */
    if (*cfg.api.keys_file || *cfg.events.url || cfg.unsubscribe.one_click ||
        approval_wanted(&cfg))
        postern_add(&sup, self_dir, "api", "postern-api", "postern-api", config, !use_syslog,
                    NULL, STOP_WORKERS);

    g_unix_fd_add(daemon_signal_fd(), G_IO_IN, postern_stop, &sup);
    msg_info("starting %u processes; spool %s; LMTP on %s", sup.children->len, cfg.spool.dir,
             cfg.ingest.listen[0]);
    for (guint i = 0; i < sup.children->len; i++)
        child_start(sup.children->pdata[i]);
    g_main_loop_run(sup.loop);
    msg_info("all processes stopped");
    for (guint i = 0; i < sup.children->len; i++) {
        struct child *c = sup.children->pdata[i];
        g_strfreev(c->argv);
        g_free(c->name);
        g_free(c);
    }
    g_ptr_array_free(sup.children, TRUE);
    g_main_loop_unref(sup.loop);
    config_free(&cfg);
    close(lock_fd);
    if (sup.exit_status)
        msg_error("stopped: a process could not start (exit status %d)", sup.exit_status);
    return sup.exit_status;
}

int main(int argc, char **argv)
{
    g_autofree char *config = NULL;
    gboolean use_syslog = FALSE;
    GOptionEntry options[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "configuration file", "FILE" },
        { "syslog", 0, 0, G_OPTION_ARG_NONE, &use_syslog, "log to syslog, not stderr", NULL },
        { NULL }
    };
    g_autoptr(GOptionContext) octx = g_option_context_new("run - run the Postern relay");
    GError *err = NULL;

    log_init("postern", TRUE);
    g_option_context_add_main_entries(octx, options, NULL);
    if (!g_option_context_parse(octx, &argc, &argv, &err)) {
        fprintf(stderr, "postern: %s\n", err->message);
        return CONFIG_EXIT_USAGE;
    }
    if (argc != 2 || !g_str_equal(argv[1], "run")) {
        fprintf(stderr, "usage: postern [-c FILE] [--syslog] run\n");
        return CONFIG_EXIT_USAGE;
    }
    log_init("postern", !use_syslog);
    return postern_run(config, use_syslog);
}
