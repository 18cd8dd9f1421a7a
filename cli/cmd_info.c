/* cmd_info.c - placeholder until the read side lands (issue 4). */
#include "commands.h"

int cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg("'info' is not built yet");
    return 1;
}
