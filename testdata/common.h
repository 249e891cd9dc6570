/* common.h — helpers shared by the C test workloads. Include after defining PROG (the
 * program name for messages) and declaring `static void usage(void)`. */
#ifndef MIGSHM_TESTDATA_COMMON_H
#define MIGSHM_TESTDATA_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* parse_num parses a non-negative number (decimal, 0x hex or 0 octal) given for flag, or
 * exits 2 with a message. */
static unsigned long long parse_num(const char *flag, const char *s)
{
	char *end;
	unsigned long long v;

	if (s == NULL)
		usage();
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
		fprintf(stderr, PROG ": bad value for %s: %s\n", flag, s);
		exit(2);
	}
	return v;
}

#endif
