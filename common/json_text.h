/*
 * json_text.h - what JSON text may reach json-glib's parser.
 *
 * Every JSON document Postern reads (an API request's body, the
 * platform's answer to a claim, `spoolctl token import`'s file) is one
 * object or one array of bounded nesting.  json-glib 1.6.6 (Debian
 * bookworm) takes more, and that is where it fails: it parses by
 * recursion, so 100,000 '[' in a row overflow the stack; it takes a
 * scalar or JavaScript's "NAME = VALUE;" as a document; and it leaks the
 * value that follows the first one ("[]{...}": ~500 bytes a request, an
 * unbounded leak in a daemon; found by fuzz_api).  So the text is checked
 * first, by one pass over its bytes that follows strings and brackets:
 * after blanks it must open '{' or '[', nest at most max_depth deep, and
 * end, but for blanks, where that first value closes (RFC 8259 §2: one
 * value).  What it lets through may still be malformed; json-glib says
 * how.
 *
 * Pure: no allocation but the error, no I/O, no logging.
 */
#ifndef POSTERN_JSON_TEXT_H
#define POSTERN_JSON_TEXT_H

#include <glib.h>

#define JSON_TEXT_ERROR (json_text_error_quark())
GQuark json_text_error_quark(void);

/* TRUE when text[0..len) may be handed to json-glib; else FALSE and *err
 * says why, in words fit for a 400 reply or a log line. */
gboolean json_text_check(const char *text, size_t len, int max_depth, GError **err);

#endif
