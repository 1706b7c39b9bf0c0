/*
 * lmtp_proto.h - the LMTP/SMTP server protocol, without any I/O.
 *
 * Two pure parsers: lmtp_parse_command() turns one command line into a
 * struct lmtp_cmd or the reply that refuses it; the data reader turns the
 * bytes after DATA into the stored message (dot-unstuffed, CRLF line ends,
 * header section measured), however the bytes are split across reads.
 * Both are unit-tested and fuzzed on their own.
 */
#ifndef POSTERN_LMTP_PROTO_H
#define POSTERN_LMTP_PROTO_H

#include <glib.h>
#include <stdint.h>

#define LMTP_LINE_MAX 2048          /* a longer command line is refused */

enum lmtp_verb {
    LMTP_LHLO, LMTP_EHLO, LMTP_HELO, LMTP_MAIL, LMTP_RCPT, LMTP_DATA,
    LMTP_RSET, LMTP_NOOP, LMTP_QUIT, LMTP_VRFY, LMTP_HELP, LMTP_STARTTLS,
    LMTP_BAD,                       /* refused: see reply */
};

struct lmtp_cmd {
    enum lmtp_verb verb;
    char *arg;                      /* LHLO/EHLO/HELO name */
    char *addr;                     /* MAIL/RCPT path, no brackets, "" = null */
    uint64_t size;                  /* MAIL SIZE=, 0 if absent */
    gboolean body_8bit;             /* MAIL BODY=8BITMIME */
    gboolean smtputf8;              /* MAIL SMTPUTF8 */
    const char *reply;              /* for LMTP_BAD: the full reply line */
};

/* line: without the CRLF.  Always fills cmd; free with lmtp_cmd_clear. */
void lmtp_parse_command(const char *line, size_t len, struct lmtp_cmd *cmd);
void lmtp_cmd_clear(struct lmtp_cmd *cmd);

/*
 * "restricted+tag@Abakus.NO" -> "restricted@abakus.no": the form in which
 * [ingest] recipients are compared (case-insensitive, extension stripped,
 * as Postfix's recipient_delimiter does).
 */
char *lmtp_addr_canonical(const char *addr);
/* No byte of addr is 8-bit: it needs no SMTPUTF8. */
gboolean lmtp_addr_is_ascii(const char *addr);

enum lmtp_data_status { LMTP_DATA_MORE, LMTP_DATA_DONE };

struct lmtp_data_reader {
    GByteArray *out;                /* the message, CRLF line ends */
    uint64_t max_size;
    uint64_t max_header;
    uint64_t seen;                  /* bytes of message, stored or not */
    uint64_t header_bytes;
    gboolean in_header;
    gboolean too_big;               /* over max_size: 552 5.3.4 */
    gboolean header_too_big;        /* over max_header: 552 5.6.0 */
    int where;                      /* position in the line structure */
    gboolean name_pending;          /* header line: field name not yet ended */
    gboolean bare_lf_line;          /* this line began after a bare LF */
};

void lmtp_data_begin(struct lmtp_data_reader *r, uint64_t max_size, uint64_t max_header);
/* Consume up to len bytes; *used says how many (the rest follows the end). */
enum lmtp_data_status lmtp_data_feed(struct lmtp_data_reader *r, const char *buf, size_t len,
                                     size_t *used);
void lmtp_data_clear(struct lmtp_data_reader *r);

#endif
