/*
 * Header rewrite (SPEC §4.3) and the one serialisation (§4.5) of the
 * outgoing copy, with the footer (§4.4) in between.
 */
#include <string.h>

#include "transform/mime.h"

/* Kept from the original: GMime files the top-level Content-* headers
 * under the body part, every other header under the message. */
static const char *const message_keep[] = {"Subject", "MIME-Version", NULL};
static const char *const body_keep[] = {
	"Content-Type", "Content-Transfer-Encoding", "Content-Disposition", NULL,
};

/*
 * Drops every header of list but the last of each name in keep. Of
 * duplicates, GMime acts on the last: a second Content-Type decides the
 * structure it parsed, so only that one may go out with it.
 */
static void rewrite_keep(GMimeHeaderList *list, const char *const *keep)
{
	guint   seen = 0;

	for (int i = g_mime_header_list_get_count(list) - 1; i >= 0; i--) {
		const char *name = g_mime_header_get_name(g_mime_header_list_get_header_at(list, i));
		guint   k = 0;

		while (keep[k] != NULL && g_ascii_strcasecmp(keep[k], name) != 0)
			k++;
		if (keep[k] != NULL && !(seen & 1u << k))
			seen |= 1u << k;
		else
			g_mime_header_list_remove_at(list, i);
	}
}

/* Non-empty printable ASCII without any of the characters in bad. */
static gboolean rewrite_is_word(const char *s, const char *bad)
{
	if (s == NULL || *s == 0)
		return FALSE;
	for (; *s; s++)
		if (*s < '!' || *s > '~' || strchr(bad, *s) != NULL)
			return FALSE;
	return TRUE;
}

/*
 * Checks the parameters before anything of the message changes. Returns
 * the mailbox of p->from. The URL and domain go into headers verbatim, so
 * nothing in them may end or fold a header line.
 */
static InternetAddressMailbox *rewrite_check(const struct rewrite_params *p, GError **err)
{
	InternetAddressList *list;
	InternetAddress *from = NULL;

	if (!rewrite_is_word(p->message_id_domain, "<>@")) {
		g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM, "[dkim] domain \"%s\" is not a domain",
			    p->message_id_domain ? p->message_id_domain : "");
		return NULL;
	}
	if (p->unsubscribe_url && *p->unsubscribe_url && !rewrite_is_word(p->unsubscribe_url, "<>")) {
		g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM,
			    "[rewrite] unsubscribe_url \"%s\" has blanks, controls or angle brackets",
			    p->unsubscribe_url);
		return NULL;
	}
	if (p->from != NULL && (list = internet_address_list_parse(NULL, p->from)) != NULL) {
		if (internet_address_list_length(list) == 1)
			from = internet_address_list_get_address(list, 0);
		if (from != NULL && INTERNET_ADDRESS_IS_MAILBOX(from))
			g_object_ref(from);
		else
			from = NULL;
		g_object_unref(list);
	}
	if (from == NULL)
		g_set_error(err, MIME_ERROR, MIME_ERROR_PARAM, "[rewrite] from \"%s\" is not one mailbox",
			    p->from ? p->from : "");
	return (InternetAddressMailbox *) from;
}

/* Sets a new random Message-ID on domain; returns it without brackets. */
static char *rewrite_message_id(GMimeMessage *msg, const char *domain)
{
	char   *uuid = g_uuid_string_random();
	char   *id = g_strdup_printf("%s@%s", uuid, domain);
	char   *value = g_strdup_printf("<%s>", id);

	g_mime_object_set_header(GMIME_OBJECT(msg), "Message-ID", value, NULL);
	g_free(value);
	g_free(uuid);
	return id;
}

/* RFC 2369 List-Unsubscribe with RFC 8058 one-click. */
static void rewrite_unsubscribe(GMimeMessage *msg, const char *url)
{
	GMimeObject *obj = GMIME_OBJECT(msg);
	char   *raw = g_strdup_printf(" <%s>\n", url);

	/*
	 * GMime would turn a URL longer than a line into RFC 2047 encoded
	 * words, which no client reads as a URL: the header gets its raw
	 * value, in GMime's form for raw values (from after the colon to the
	 * newline). rewrite_check() made sure the URL is one printable word.
	 */
	g_mime_object_append_header(obj, "List-Unsubscribe", url, NULL);
	g_mime_header_set_raw_value(g_mime_header_list_get_header(g_mime_object_get_header_list(obj),
								   "List-Unsubscribe"), raw);
	g_mime_object_append_header(obj, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click", NULL);
	g_free(raw);
}

/* The footer template filled in. A hidden sender is not named. */
static char *rewrite_footer(const struct rewrite_params *p)
{
	const char *sender = p->hide_sender || p->original_sender == NULL ? "" : p->original_sender;
	const char *url = p->unsubscribe_url ? p->unsubscribe_url : "";
	GString *out = g_string_new(NULL);

	for (const char *s = p->footer; *s;) {
		if (g_str_has_prefix(s, "{sender}")) {
			g_string_append(out, sender);
			s += strlen("{sender}");
		} else if (g_str_has_prefix(s, "{unsubscribe_url}")) {
			g_string_append(out, url);
			s += strlen("{unsubscribe_url}");
		} else {
			g_string_append_c(out, *s++);
		}
	}
	return g_string_free(out, FALSE);
}

/*
 * The one serialisation. GMime's DOS newline format gives headers and part
 * content CRLF, but preamble and epilogue are written as they were parsed:
 * a newline filter over the whole output makes every line end CRLF, the
 * last one included.
 */
static GBytes *rewrite_write(GMimeMessage *msg, GError **err)
{
	GMimeFormatOptions *opts = g_mime_format_options_new();
	GByteArray *bytes = g_byte_array_new();
	GMimeStream *mem = g_mime_stream_mem_new_with_byte_array(bytes);
	GMimeStream *crlf = g_mime_stream_filter_new(mem);
	GMimeFilter *filter;
	gboolean ok;

	g_mime_format_options_set_newline_format(opts, GMIME_NEWLINE_FORMAT_DOS);
	g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
	filter = g_mime_format_options_create_newline_filter(opts, TRUE);
	g_mime_stream_filter_add(GMIME_STREAM_FILTER(crlf), filter);
	ok = g_mime_object_write_to_stream(GMIME_OBJECT(msg), opts, crlf) >= 0
	    && g_mime_stream_flush(crlf) == 0;
	g_object_unref(filter);
	g_object_unref(crlf);
	g_object_unref(mem);
	g_mime_format_options_free(opts);
	if (!ok) {
		g_byte_array_unref(bytes);
		g_set_error(err, MIME_ERROR, MIME_ERROR_WRITE, "cannot serialise the message");
		return NULL;
	}
	return g_byte_array_free_to_bytes(bytes);
}

/* Does the decoded content of part have a line longer than RFC 5322's 998? */
static gboolean rewrite_has_long_line(GMimePart *part)
{
	GMimeDataWrapper *content = g_mime_part_get_content(part);
	GByteArray *bytes;
	GMimeStream *stream;
	gboolean longer = FALSE;
	guint start = 0;

	if (!content)
		return FALSE;
	bytes = g_byte_array_new();
	stream = g_mime_stream_mem_new_with_byte_array(bytes);
	g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
	g_mime_data_wrapper_write_to_stream(content, stream);
	for (guint i = 0; i <= bytes->len && !longer; i++)
		if (i == bytes->len || bytes->data[i] == '\n') {
			longer = i - start > 998 + 1;
			start = i + 1;
		}
	g_object_unref(stream);
	g_byte_array_unref(bytes);
	return longer;
}

/*
 * A part sent as 7bit, 8bit or binary with a line over 998 octets would be
 * folded or refused by the next relay, and a folded line breaks the DKIM
 * signature: re-encode it (quoted-printable for text, base64 otherwise).
 * Parts already in base64 or quoted-printable have short lines.
 */
static void rewrite_long_lines_part(GMimeObject *parent, GMimeObject *obj, gpointer data)
{
	GMimePart *part;
	GMimeContentEncoding enc;

	if (!GMIME_IS_PART(obj))
		return;
	part = GMIME_PART(obj);
	enc = g_mime_part_get_content_encoding(part);
	if (enc != GMIME_CONTENT_ENCODING_DEFAULT && enc != GMIME_CONTENT_ENCODING_7BIT &&
	    enc != GMIME_CONTENT_ENCODING_8BIT && enc != GMIME_CONTENT_ENCODING_BINARY)
		return;
	if (!rewrite_has_long_line(part))
		return;
	g_mime_part_set_content_encoding(part,
		g_mime_content_type_is_type(g_mime_object_get_content_type(obj), "text", "*")
			? GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE : GMIME_CONTENT_ENCODING_BASE64);
}

GBytes *mime_rewrite(GMimeMessage *msg, const struct rewrite_params *p,
		     char **message_id, GError **err)
{
	GMimeObject *obj = GMIME_OBJECT(msg);
	gboolean known = p->original_sender != NULL && *p->original_sender;
	gboolean as_original = p->use_original_sender && known;
	InternetAddressMailbox *from;
	GDateTime *date;
	GBytes *out;
	char   *id;
	char   *footer;

	if ((from = rewrite_check(p, err)) == NULL)
		return NULL;
	rewrite_keep(g_mime_object_get_header_list(obj), message_keep);
	rewrite_keep(g_mime_object_get_header_list(g_mime_message_get_mime_part(msg)), body_keep);
	if (g_mime_object_get_header(obj, "MIME-Version") == NULL)
		g_mime_object_append_header(obj, "MIME-Version", "1.0", NULL);

	if (as_original)
		g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM, NULL, p->original_sender);
	else
		g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM,
					   internet_address_get_name(INTERNET_ADDRESS(from)),
					   internet_address_mailbox_get_addr(from));
	g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_SENDER, NULL,
				   internet_address_mailbox_get_addr(from));
	if (known && !p->hide_sender)
		g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_REPLY_TO, NULL, p->original_sender);
	g_object_unref(from);

	date = g_date_time_new_from_unix_utc(p->date);
	g_mime_message_set_date(msg, date);
	g_date_time_unref(date);
	id = rewrite_message_id(msg, p->message_id_domain);
	if (p->unsubscribe_url && *p->unsubscribe_url)
		rewrite_unsubscribe(msg, p->unsubscribe_url);

	if (!as_original && p->footer && *p->footer) {
		footer = rewrite_footer(p);
		mime_footer_add(msg, footer);
		g_free(footer);
	}
	g_mime_message_foreach(msg, rewrite_long_lines_part, NULL);
	if ((out = rewrite_write(msg, err)) == NULL) {
		g_free(id);
		return NULL;
	}
	*message_id = id;
	return out;
}
