/* cmd_check.c - placeholder until the read side lands (issue 4). */
#include "commands.h"

int cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg("'check' is not built yet");
    return 1;
}
