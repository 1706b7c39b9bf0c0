/*
 * daemon.c - see daemon.h.
 */
#include "common/daemon.h"
#include "common/log.h"

#include <signal.h>
#include <stdlib.h>

void daemon_init(int *argc, char ***argv, const char *name, const char *summary,
                 const GOptionEntry *extra, struct postern_config *cfg)
{
    g_autofree char *config_path = NULL;
    gboolean foreground = FALSE;
    GOptionEntry common[] = {
        { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config_path, "configuration file", "FILE" },
        { "foreground", 'f', 0, G_OPTION_ARG_NONE, &foreground, "log to stderr", NULL },
        { NULL }
    };
    g_autoptr(GOptionContext) octx = g_option_context_new(summary);
    GError *err = NULL;

    log_init(name, TRUE);
    g_option_context_add_main_entries(octx, common, NULL);
    if (extra)
        g_option_context_add_main_entries(octx, extra, NULL);
    if (!g_option_context_parse(octx, argc, argv, &err)) {
        g_printerr("%s: %s\n", name, err->message);
        exit(CONFIG_EXIT_USAGE);
    }
    log_init(name, foreground);
    config_load_or_exit(cfg, config_path);
    signal(SIGPIPE, SIG_IGN);
}
