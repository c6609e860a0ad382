/*
 * mdata: a small SmartOS metadata protocol (v2) client for Nereid's test image.
 *
 *   mdata get KEY          print the value of KEY
 *   mdata put KEY VALUE    store VALUE under KEY
 *   mdata delete KEY       remove KEY
 *   mdata keys             list the keys, one per line
 *
 * Exit codes follow mdata-client: 0 = SUCCESS, 1 = NOTFOUND, 2 = anything else
 * (a FAILURE reply, a timeout, a bad device...), with a message on stderr.
 *
 * The protocol (see compat/images-net-metadata.md section 4):
 *   1. open the second serial port, lock it, set raw mode, drain input;
 *   2. send "\n" until the host answers "invalid command\n" (the host side may
 *      connect a moment after we boot, so resend every 2 s for up to 30 s);
 *   3. send "NEGOTIATE V2\n", expect "V2_OK\n";
 *   4. send one frame "V2 <len> <crc32> <reqid> <CODE>[ <base64 payload>]\n"
 *      where len and crc32 cover only "<reqid> <CODE>[ <payload>]", and read
 *      reply lines until one echoes our reqid with a valid len and crc32.
 *
 * Environment: MDATA_DEVICE (default /dev/ttyS1), MDATA_TIMEOUT (overall
 * timeout in seconds, default 45).
 *
 * Self-contained (libc only) so that it links statically: gcc -static -Os.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/file.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FOUND 0
#define EXIT_NOTFOUND 1
#define EXIT_ERROR 2

#define HELLO_RESEND_MS 2000      /* resend "\n" this often ...            */
#define HELLO_TOTAL_MS 30000      /* ... for at most this long             */
#define NEGOTIATE_MS 6000         /* wait for V2_OK this long              */
#define MAX_LINE (16 * 1024 * 1024) /* refuse absurd reply lines           */

static int64_t deadline_ms; /* overall deadline, CLOCK_MONOTONIC milliseconds */

/* ---- small helpers ------------------------------------------------------ */

static void die(const char *fmt, ...)
{
	va_list ap;
	fputs("mdata: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_ERROR);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		die("out of memory");
	return p;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- CRC-32 (IEEE, reflected 0xEDB88320, as zlib's crc32) -------------- */

static uint32_t crc32_ieee(const char *buf, size_t len)
{
	uint32_t crc = 0xFFFFFFFFu;
	for (size_t i = 0; i < len; i++) {
		crc ^= (unsigned char)buf[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
	}
	return crc ^ 0xFFFFFFFFu;
}

/* ---- base64 (standard alphabet, '=' padding, no newlines) -------------- */

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Returns a NUL-terminated malloc'd string. */
static char *b64_encode(const char *in, size_t len)
{
	char *out = xmalloc(4 * ((len + 2) / 3) + 1), *o = out;
	const unsigned char *p = (const unsigned char *)in;
	size_t i;
	for (i = 0; i + 2 < len; i += 3) {
		*o++ = b64_alphabet[p[i] >> 2];
		*o++ = b64_alphabet[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		*o++ = b64_alphabet[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		*o++ = b64_alphabet[p[i + 2] & 63];
	}
	if (i < len) {
		unsigned a = p[i], b = i + 1 < len ? p[i + 1] : 0;
		*o++ = b64_alphabet[a >> 2];
		*o++ = b64_alphabet[((a & 3) << 4) | (b >> 4)];
		*o++ = i + 1 < len ? b64_alphabet[(b & 15) << 2] : '=';
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

static int b64_value(char c)
{
	const char *p = c ? strchr(b64_alphabet, c) : NULL;
	return p ? (int)(p - b64_alphabet) : -1;
}

/* Decodes into a NUL-terminated malloc'd buffer; returns NULL if invalid. */
static char *b64_decode(const char *in, size_t *out_len)
{
	size_t len = strlen(in);
	char *out = xmalloc(len / 4 * 3 + 3), *o = out;
	unsigned acc = 0;
	int bits = 0;
	size_t i;
	for (i = 0; i < len && in[i] != '='; i++) {
		int v = b64_value(in[i]);
		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			*o++ = (char)((acc >> bits) & 0xFF);
		}
	}
	for (; i < len; i++) /* only padding may follow */
		if (in[i] != '=') {
			free(out);
			return NULL;
		}
	*o = '\0';
	if (out_len)
		*out_len = (size_t)(o - out);
	return out;
}

/* ---- the serial port ---------------------------------------------------- */

static int port_open(const char *path)
{
	int fd = open(path, O_RDWR | O_NOCTTY);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	if (flock(fd, LOCK_EX) != 0)
		die("lock %s: %s", path, strerror(errno));

	struct termios t;
	if (tcgetattr(fd, &t) == 0) { /* a socket or pipe (tests) is not a tty */
		cfmakeraw(&t);
		t.c_cflag |= CS8 | CLOCAL | CREAD;
		t.c_cc[VMIN] = 0;  /* read() returns after at most VTIME ... */
		t.c_cc[VTIME] = 1; /* ... tenths of a second without data     */
		if (tcsetattr(fd, TCSAFLUSH, &t) != 0)
			die("tcsetattr %s: %s", path, strerror(errno));
	}
	return fd;
}

static void port_write(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write to metadata port: %s", strerror(errno));
		buf += n;
		len -= (size_t)n;
	}
}

/* Reads one byte; returns 1, or 0 if nothing arrived within ~100 ms. */
static int port_read_byte(int fd, char *c)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int ready = poll(&p, 1, 100);
	if (ready < 0 && errno != EINTR)
		die("poll on metadata port: %s", strerror(errno));
	if (ready <= 0)
		return 0;
	ssize_t n = read(fd, c, 1);
	if (n == 1)
		return 1;
	if (n < 0 && errno != EINTR && errno != EAGAIN)
		die("read from metadata port: %s", strerror(errno));
	if (n == 0)
		usleep(100 * 1000); /* nothing after all (or end of file): do not spin */
	return 0;
}

/* Discards whatever is waiting on the port (stale replies, firmware noise). */
static void port_drain(int fd)
{
	char c;
	tcflush(fd, TCIFLUSH);
	while (port_read_byte(fd, &c) == 1 && now_ms() < deadline_ms)
		;
}

/*
 * Reads one line (without its LF, trailing CR and blanks trimmed) into a
 * malloc'd string, byte by byte, giving up at `until` (or the overall
 * deadline). Returns NULL on timeout.
 */
static char *port_read_line(int fd, int64_t until)
{
	static char *buf;
	static size_t cap, len; /* a partial line survives a timeout */
	char c;

	if (until > deadline_ms)
		until = deadline_ms;
	for (;;) {
		if (now_ms() >= until)
			return NULL;
		if (!port_read_byte(fd, &c))
			continue;
		if (c == '\n')
			break;
		if (len + 1 >= cap) {
			if (cap >= MAX_LINE)
				die("reply line longer than %d bytes", MAX_LINE);
			cap = cap ? cap * 2 : 256;
			buf = realloc(buf, cap);
			if (!buf)
				die("out of memory");
		}
		buf[len++] = c;
	}
	while (len > 0 && (buf[len - 1] == '\r' || buf[len - 1] == ' '))
		len--;
	char *line = xmalloc(len + 1);
	memcpy(line, buf, len);
	line[len] = '\0';
	len = 0;
	return line;
}

/* ---- protocol: connection start and negotiation ------------------------- */

/* Sends "\n" until the host answers "invalid command". */
static void hello(int fd)
{
	int64_t give_up = now_ms() + HELLO_TOTAL_MS;
	while (now_ms() < give_up && now_ms() < deadline_ms) {
		port_write(fd, "\n", 1);
		int64_t resend = now_ms() + HELLO_RESEND_MS;
		char *line;
		while ((line = port_read_line(fd, resend)) != NULL) {
			int ok = strcmp(line, "invalid command") == 0;
			free(line);
			if (ok)
				return;
		}
	}
	die("no answer on the metadata port (is the host side connected?)");
}

static void negotiate_v2(int fd)
{
	port_write(fd, "NEGOTIATE V2\n", 13);
	int64_t until = now_ms() + NEGOTIATE_MS;
	char *line;
	while ((line = port_read_line(fd, until)) != NULL) {
		/* Late answers to our repeated "\n" may still be in flight. */
		if (strcmp(line, "invalid command") == 0 || line[0] == '\0') {
			free(line);
			continue;
		}
		if (strcmp(line, "V2_OK") == 0) {
			free(line);
			return;
		}
		die("host does not speak protocol v2 (answered \"%s\")", line);
	}
	die("timeout waiting for V2_OK");
}

/* ---- protocol: one V2 request and its reply ----------------------------- */

struct reply {
	char code[32];  /* SUCCESS, NOTFOUND, FAILURE, ... */
	char *payload;  /* decoded payload, "" when absent */
};

static void random_reqid(char out[9])
{
	uint32_t r = 0;
	int fd = open("/dev/urandom", O_RDONLY);
	if (fd < 0 || read(fd, &r, sizeof r) != sizeof r)
		r = (uint32_t)now_ms() ^ ((uint32_t)getpid() << 16);
	if (fd >= 0)
		close(fd);
	snprintf(out, 9, "%08x", r);
}

static void send_request(int fd, const char *reqid, const char *code, const char *payload)
{
	size_t blen = strlen(reqid) + 1 + strlen(code) + (payload ? 1 + strlen(payload) : 0);
	char *body = xmalloc(blen + 1);
	snprintf(body, blen + 1, "%s %s%s%s", reqid, code, payload ? " " : "", payload ? payload : "");

	size_t flen = blen + 64;
	char *frame = xmalloc(flen);
	int n = snprintf(frame, flen, "V2 %zu %08x %s\n", blen, crc32_ieee(body, blen), body);
	port_write(fd, frame, (size_t)n);
	free(frame);
	free(body);
}

/*
 * Parses "V2 <len> <crc> <reqid> <CODE>[ <payload>]". Returns 1 and fills
 * `r` if the line is a valid frame for `reqid`; 0 for anything else (frames
 * for other requests, noise, bad len or crc), which the caller ignores.
 */
static int parse_reply(const char *line, const char *reqid, struct reply *r)
{
	unsigned long len;
	unsigned int crc;
	int off = 0;

	if (sscanf(line, "V2 %lu %x %n", &len, &crc, &off) != 2 || off == 0)
		return 0;
	const char *body = line + off;
	if (strlen(body) != len || crc32_ieee(body, len) != crc)
		return 0;
	if (strncmp(body, reqid, 8) != 0 || body[8] != ' ')
		return 0;

	const char *code = body + 9, *sp = strchr(code, ' ');
	size_t clen = sp ? (size_t)(sp - code) : strlen(code);
	if (clen == 0 || clen >= sizeof r->code)
		return 0;
	memcpy(r->code, code, clen);
	r->code[clen] = '\0';

	r->payload = b64_decode(sp ? sp + 1 : "", NULL);
	return r->payload != NULL;
}

static struct reply request(int fd, const char *code, const char *payload)
{
	char reqid[9];
	struct reply r;
	char *line;

	random_reqid(reqid);
	send_request(fd, reqid, code, payload);
	while ((line = port_read_line(fd, deadline_ms)) != NULL) {
		int ok = parse_reply(line, reqid, &r);
		free(line);
		if (ok)
			return r;
	}
	die("timeout waiting for the reply to %s", code);
	return r; /* not reached */
}

/* ---- commands ----------------------------------------------------------- */

static void usage(void)
{
	fputs("usage: mdata get KEY | put KEY VALUE | delete KEY | keys\n", stderr);
	exit(EXIT_ERROR);
}

/* Checks the CRC against the protocol's test vector, so a broken build fails loudly. */
static void self_check(void)
{
	static const char body[] = "dc4fae17 SUCCESS W10=";
	if (sizeof body - 1 != 21 || crc32_ieee(body, 21) != 0x265ae1d8u)
		die("internal error: CRC-32 self-check failed");
}

int main(int argc, char **argv)
{
	const char *code, *dev = getenv("MDATA_DEVICE"), *tmo = getenv("MDATA_TIMEOUT");
	char *payload = NULL;

	self_check();
	if (argc == 3 && strcmp(argv[1], "get") == 0) {
		code = "GET";
		payload = b64_encode(argv[2], strlen(argv[2]));
	} else if (argc == 3 && strcmp(argv[1], "delete") == 0) {
		code = "DELETE";
		payload = b64_encode(argv[2], strlen(argv[2]));
	} else if (argc == 4 && strcmp(argv[1], "put") == 0) {
		/* PUT is double-encoded: base64(base64(key) + " " + base64(value)). */
		char *k = b64_encode(argv[2], strlen(argv[2]));
		char *v = b64_encode(argv[3], strlen(argv[3]));
		size_t n = strlen(k) + 1 + strlen(v);
		char *kv = xmalloc(n + 1);
		snprintf(kv, n + 1, "%s %s", k, v);
		payload = b64_encode(kv, n);
		free(k);
		free(v);
		free(kv);
		code = "PUT";
	} else if (argc == 2 && strcmp(argv[1], "keys") == 0) {
		code = "KEYS";
	} else {
		usage();
	}

	int timeout_s = tmo && atoi(tmo) > 0 ? atoi(tmo) : 45;
	deadline_ms = now_ms() + (int64_t)timeout_s * 1000;

	int fd = port_open(dev && *dev ? dev : "/dev/ttyS1");
	port_drain(fd);
	hello(fd);
	negotiate_v2(fd);
	struct reply r = request(fd, code, payload);
	close(fd);

	if (strcmp(r.code, "SUCCESS") == 0) {
		int prints = strcmp(code, "GET") == 0 || (strcmp(code, "KEYS") == 0 && r.payload[0]);
		if (prints)
			printf("%s\n", r.payload);
		return EXIT_FOUND;
	}
	if (strcmp(r.code, "NOTFOUND") == 0)
		return EXIT_NOTFOUND;
	fprintf(stderr, "mdata: %s%s%s\n", r.code, r.payload[0] ? ": " : "", r.payload);
	return EXIT_ERROR;
}
