// Test certificates made at test time with OpenSSL's API, and a temporary
// directory for them: for the TLS tests of the server and of chat_bench.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include <doctest/doctest.h>

#include "chat/common/tls.hpp"  // PULSECHAT_HAVE_OPENSSL

#if PULSECHAT_HAVE_OPENSSL
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#endif

namespace chat::test {

// A directory of its own for the files a test makes; removed afterwards.
class TempDir {
public:
    TempDir() {
        std::string name = (std::filesystem::temp_directory_path() / "pulsechat_tls_XXXXXX").string();
        REQUIRE(::mkdtemp(name.data()) != nullptr);
        path_ = name;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

#if PULSECHAT_HAVE_OPENSSL

// --- certificates made at test time, with OpenSSL's API ---

struct KeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertFree {
    void operator()(X509* c) const { X509_free(c); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

struct Issued {
    Key key;
    Cert cert;
    std::string cert_file;
    std::string key_file;
};

inline void add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
    REQUIRE(ext != nullptr);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

enum class CertRole { ca, server, client };

// A P-256 key and a certificate for `cn`, signed by `issuer` (self-signed
// when null), written as PEM to <dir>/<name>.pem and <dir>/<name>.key. A
// server certificate names `names` (subjectAltName).
inline Issued issue(const TempDir& dir, const std::string& name, const std::string& cn, CertRole role,
             const Issued* issuer = nullptr, const std::string& names = "DNS:localhost,IP:127.0.0.1") {
    static long serial = 1;
    Issued out;
    out.key.reset(EVP_EC_gen("P-256"));
    REQUIRE(out.key);
    out.cert.reset(X509_new());
    X509* cert = out.cert.get();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    X509_set_pubkey(cert, out.key.get());
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509* signer = issuer != nullptr ? issuer->cert.get() : cert;
    X509_set_issuer_name(cert, X509_get_subject_name(signer));
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, signer, cert, nullptr, nullptr, 0);
    add_extension(cert, &ctx, NID_subject_key_identifier, "hash");
    switch (role) {
        case CertRole::ca:
            add_extension(cert, &ctx, NID_basic_constraints, "critical,CA:TRUE");
            add_extension(cert, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
            break;
        case CertRole::server:
            add_extension(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE");
            add_extension(cert, &ctx, NID_key_usage, "critical,digitalSignature");
            add_extension(cert, &ctx, NID_ext_key_usage, "serverAuth");
            add_extension(cert, &ctx, NID_subject_alt_name, names.c_str());
            break;
        case CertRole::client:
            add_extension(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE");
            add_extension(cert, &ctx, NID_key_usage, "critical,digitalSignature");
            add_extension(cert, &ctx, NID_ext_key_usage, "clientAuth");
            break;
    }
    EVP_PKEY* signing_key = issuer != nullptr ? issuer->key.get() : out.key.get();
    REQUIRE(X509_sign(cert, signing_key, EVP_sha256()) > 0);

    out.cert_file = dir.file(name + ".pem");
    out.key_file = dir.file(name + ".key");
    BIO* c = BIO_new_file(out.cert_file.c_str(), "w");
    REQUIRE(c != nullptr);
    PEM_write_bio_X509(c, cert);
    BIO_free(c);
    BIO* k = BIO_new_file(out.key_file.c_str(), "w");
    REQUIRE(k != nullptr);
    PEM_write_bio_PrivateKey(k, out.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(k);
    return out;
}

// A test PKI: a CA with a server and a client certificate, and a second,
// unrelated CA with a client certificate of its own.
struct Pki {
    TempDir dir;
    Issued ca = issue(dir, "ca", "pulsechat test CA", CertRole::ca);
    Issued server = issue(dir, "server", "localhost", CertRole::server, &ca);
    Issued client = issue(dir, "client", "alice", CertRole::client, &ca);
    Issued other_ca = issue(dir, "other-ca", "some other CA", CertRole::ca);
    Issued other_client = issue(dir, "other-client", "mallory", CertRole::client, &other_ca);
};

#endif  // PULSECHAT_HAVE_OPENSSL

}  // namespace chat::test
