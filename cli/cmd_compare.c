/* cmd_compare.c - placeholder until the read side lands (issue 4). */
#include "commands.h"

int cmd_compare(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg("'compare' is not built yet");
    return 1;
}
