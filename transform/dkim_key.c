/*
 * DKIM keys: load, generate, publish, sign a digest. Everything that touches
 * an EVP_PKEY is here; the rest of the module only handles bytes.
 */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "transform/dkim.h"
#include "common/secret_file.h"

G_DEFINE_QUARK(dkim-error-quark, dkim_error)

/* A PEM RSA-4096 key is about 3.3 KB; anything much bigger is not a key. */
#define KEY_FILE_MAX (64 * 1024)

/* Report a libcrypto failure and empty its error queue, so that the next
 * OpenSSL user in this process (TLS) does not inherit a stale error. */
static void fail_ssl(GError **err, const char *path, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;

    g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED, "%s: %s (%s)", path,
                what, reason ? reason : "no detail from libcrypto");
    ERR_clear_error();
}

static gboolean selector_check(const char *selector, GError **err)
{
    if (dkim_dns_name_valid(selector))
        return TRUE;
    g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                "dkim selector \"%s\" is not a valid DNS name", selector);
    return FALSE;
}

/*
 * Wrap a key, taking ownership of pkey. The signing context is set up here,
 * once: for RSA a context that signs a SHA-256 digest with PKCS#1 v1.5
 * padding (an RSA key's default), for Ed25519 one without a digest, which
 * signs the digest bytes themselves (PureEdDSA).
 */
static struct dkim_key *key_new(const char *selector, const char *path,
                                enum dkim_key_type type, EVP_PKEY *pkey,
                                GError **err)
{
    struct dkim_key *key = g_new0(struct dkim_key, 1);
    gboolean ok;

    key->selector = g_strdup(selector);
    key->path = g_strdup(path);
    key->type = type;
    key->pkey = pkey;
    if (type == DKIM_KEY_RSA) {
        key->rsa_ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        ok = key->rsa_ctx != NULL && EVP_PKEY_sign_init(key->rsa_ctx) == 1 &&
             EVP_PKEY_CTX_set_signature_md(key->rsa_ctx, EVP_sha256()) == 1;
    } else {
        key->sign_ctx = EVP_MD_CTX_new();
        ok = key->sign_ctx != NULL &&
             EVP_DigestSignInit(key->sign_ctx, NULL, NULL, NULL, pkey) == 1;
    }
    if (!ok) {
        fail_ssl(err, path, "cannot set up signing with this key");
        dkim_key_free(key);
        return NULL;
    }
    return key;
}

void dkim_key_free(struct dkim_key *key)
{
    if (key == NULL)
        return;
    EVP_MD_CTX_free(key->sign_ctx);
    EVP_PKEY_CTX_free(key->rsa_ctx);
    EVP_PKEY_free(key->pkey);
    g_free(key->selector);
    g_free(key->path);
    g_free(key);
}

/* ---- Loading ------------------------------------------------------------ */

/* An encrypted key would make OpenSSL prompt on the terminal: refuse it. */
static int refuse_passphrase(char *buf, int size, int rwflag, void *data)
{
    return -1;
}

/* Decode the PEM text, then wipe it: it is the private key in clear. */
static EVP_PKEY *key_parse(char *pem, size_t len, const char *path,
                           GError **err)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pkey = NULL;

    if (bio != NULL)
        pkey = PEM_read_bio_PrivateKey_ex(bio, NULL, refuse_passphrase, NULL,
                                          NULL, NULL);
    BIO_free(bio);
    OPENSSL_cleanse(pem, len);
    if (pkey == NULL)
        fail_ssl(err, path, "not a readable unencrypted PEM private key");
    return pkey;
}

/*
 * RSA keys below 1024 bits must not be verified (RFC 8301); above 4096 the
 * signature would not fit DKIM_SIG_MAX. RSA-PSS keys are another algorithm.
 */
static gboolean key_type_of(EVP_PKEY *pkey, const char *path,
                            enum dkim_key_type *type, GError **err)
{
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        *type = DKIM_KEY_ED25519;
        return TRUE;
    }
    if (!EVP_PKEY_is_a(pkey, "RSA")) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "%s: %s key; DKIM keys are RSA or Ed25519", path,
                    EVP_PKEY_get0_type_name(pkey));
        return FALSE;
    }
    if (EVP_PKEY_get_bits(pkey) < 1024 ||
        EVP_PKEY_get_size(pkey) > DKIM_SIG_MAX) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "%s: RSA key of %d bits; DKIM needs 1024 to 4096", path,
                    EVP_PKEY_get_bits(pkey));
        return FALSE;
    }
    *type = DKIM_KEY_RSA;
    return TRUE;
}

struct dkim_key *dkim_key_load(const char *selector, const char *path,
                               GError **err)
{
    enum dkim_key_type type;
    EVP_PKEY *pkey;
    size_t len;
    char *pem;

    if (!selector_check(selector, err))
        return NULL;
    if ((pem = secret_file_read(path, KEY_FILE_MAX, &len, err)) == NULL)
        return NULL;
    pkey = key_parse(pem, len, path, err);
    g_free(pem);
    if (pkey == NULL)
        return NULL;
    if (!key_type_of(pkey, path, &type, err)) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return key_new(selector, path, type, pkey, err);
}

static void key_free_notify(gpointer key)
{
    dkim_key_free(key);
}

/* Entries are "selector:path"; an empty entry (trailing comma) is skipped. */
GPtrArray *dkim_keys_load(const char *spec, GError **err)
{
    GPtrArray *keys = g_ptr_array_new_with_free_func(key_free_notify);
    char **items = g_strsplit(spec, ",", -1);

    for (char **it = items; *it != NULL; it++) {
        char *item = g_strstrip(*it);
        char *colon = strchr(item, ':');
        struct dkim_key *key;

        if (*item == '\0')
            continue;
        if (colon == NULL) {
            g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                        "dkim keys: \"%s\" is not selector:path", item);
            goto fail;
        }
        *colon = '\0';
        g_strstrip(item);
        for (guint i = 0; i < keys->len; i++) {
            if (strcmp(((struct dkim_key *)keys->pdata[i])->selector,
                       item) == 0) {
                g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                            "dkim keys: selector %s listed twice", item);
                goto fail;
            }
        }
        if ((key = dkim_key_load(item, g_strstrip(colon + 1), err)) == NULL)
            goto fail;
        g_ptr_array_add(keys, key);
    }
    if (keys->len == 0) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "dkim keys: no selector:path given");
        goto fail;
    }
    g_strfreev(items);
    return keys;

fail:
    g_strfreev(items);
    g_ptr_array_free(keys, TRUE);
    return NULL;
}

/* ---- Generation --------------------------------------------------------- */

static gboolean write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return FALSE;
        data += n;
        len -= (size_t)n;
    }
    return TRUE;
}

/*
 * Make the directory entry durable too; the key is complete either way, so
 * a failure here is not reported: at worst a crash loses the new file.
 */
static void dir_sync(const char *path)
{
    char *dir = g_path_get_dirname(path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    g_free(dir);
}

/*
 * The PEM goes to a temporary file (mode 0600 from creation, synced), which
 * is then linked to its final name. link() makes the complete file appear at
 * once and, unlike rename(), fails with EEXIST instead of replacing a key
 * that appeared meanwhile. The PEM text lives in secure-heap memory that
 * libcrypto clears when freed.
 */
static gboolean key_file_write(EVP_PKEY *pkey, const char *path, GError **err)
{
    BIO *pem = BIO_new(BIO_s_secmem());
    char *tmp = g_strconcat(path, ".XXXXXX", NULL);
    gboolean ok = FALSE;
    char *data;
    long len;
    int fd;

    if (pem == NULL ||
        !PEM_write_bio_PrivateKey(pem, pkey, NULL, NULL, 0, NULL, NULL)) {
        fail_ssl(err, path, "cannot encode the key");
        goto out;
    }
    len = BIO_get_mem_data(pem, &data);
    if ((fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0600)) < 0) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED, "%s: %s", tmp,
                    g_strerror(errno));
        goto out;
    }
    if (!write_all(fd, data, (size_t)len) || fsync(fd) != 0) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED, "%s: %s", tmp,
                    g_strerror(errno));
        close(fd);
    } else if (close(fd) != 0 || link(tmp, path) != 0) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED, "%s: %s%s", path,
                    g_strerror(errno),
                    errno == EEXIST ? "; not overwritten" : "");
    } else {
        ok = TRUE;
    }
    unlink(tmp);
    if (ok)
        dir_sync(path);
out:
    BIO_free(pem);
    g_free(tmp);
    return ok;
}

struct dkim_key *dkim_keygen(enum dkim_key_type type, const char *selector,
                             const char *path, GError **err)
{
    EVP_PKEY *pkey;

    if (selector != NULL && !selector_check(selector, err))
        return NULL;
    /* Checked first only for a prompt message: RSA generation takes a
     * while. key_file_write() is what guarantees no overwrite. */
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        g_set_error(err, DKIM_ERROR, DKIM_ERROR_FAILED,
                    "%s: file exists; not overwritten", path);
        return NULL;
    }
    if (type == DKIM_KEY_RSA)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    else
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (pkey == NULL) {
        fail_ssl(err, path, "key generation failed");
        return NULL;
    }
    if (!key_file_write(pkey, path, err)) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return key_new(selector, path, type, pkey, err);
}

/* ---- Publishing and signing --------------------------------------------- */

char *dkim_dns_record(const struct dkim_key *key)
{
    unsigned char raw[32];
    size_t raw_len = sizeof(raw);
    unsigned char *der = NULL;
    char *p64;
    char *record;
    int der_len;

    if (key->type == DKIM_KEY_ED25519) {
        if (EVP_PKEY_get_raw_public_key(key->pkey, raw, &raw_len) != 1) {
            ERR_clear_error();
            return NULL;
        }
        p64 = g_base64_encode(raw, raw_len);
    } else {
        if ((der_len = i2d_PUBKEY(key->pkey, &der)) <= 0) {
            ERR_clear_error();
            return NULL;
        }
        p64 = g_base64_encode(der, (gsize)der_len);
        OPENSSL_free(der);
    }
    record = g_strdup_printf("v=DKIM1; k=%s; p=%s",
                             key->type == DKIM_KEY_RSA ? "rsa" : "ed25519",
                             p64);
    g_free(p64);
    return record;
}

const char *dkim_key_algorithm(const struct dkim_key *key)
{
    return key->type == DKIM_KEY_RSA ? "rsa-sha256" : "ed25519-sha256";
}

/*
 * Each signature works on a copy of the key's prepared context: the key
 * stays read-only, and a copy costs a fraction of setting one up. RSA signs
 * the digest as EVP_DigestSign() would after hashing the data itself
 * (PKCS#1 v1.5 with the SHA-256 DigestInfo: the same bytes), so the header
 * hash can start from a state computed once per message.
 */
gboolean dkim_key_sign(const struct dkim_key *key,
                       const unsigned char digest[DKIM_HASH_LEN],
                       unsigned char sig[DKIM_SIG_MAX], size_t *sig_len,
                       GError **err)
{
    gboolean ok;

    *sig_len = DKIM_SIG_MAX;
    if (key->type == DKIM_KEY_RSA) {
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_dup(key->rsa_ctx);

        ok = ctx != NULL && EVP_PKEY_sign(ctx, sig, sig_len, digest,
                                          DKIM_HASH_LEN) == 1;
        EVP_PKEY_CTX_free(ctx);
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();

        ok = ctx != NULL && EVP_MD_CTX_copy_ex(ctx, key->sign_ctx) == 1 &&
             EVP_DigestSign(ctx, sig, sig_len, digest, DKIM_HASH_LEN) == 1;
        EVP_MD_CTX_free(ctx);
    }
    if (!ok)
        fail_ssl(err, key->path, "signing failed");
    return ok;
}
