/* uws_pubsub: minimal uWebSockets (wss) pub/sub bench peer for wssedge issue 14.
 *
 * usage: uws_pubsub PORT CERT KEY [MAX_BACKPRESSURE_BYTES=4194304] [CLOSE_ON_LIMIT=1] [HOST=127.0.0.1]
 *   PORT 0 picks a free port; prints "listening on HOST:PORT" (stdout, flushed) once bound.
 *
 * Client -> server, text frames (compact or spaced JSON; strings without escapes):
 *   {"op":"subscribe","id":N,"topics":["t",...]}     -> {"op":"subscribed","id":N,"topics":[{"topic":"t","seq":S},...]}
 *   {"op":"unsubscribe","id":N,"topics":["t",...]}   -> {"op":"unsubscribed","id":N}
 *   {"op":"publish","id":N,"topic":"t","data":<JSON>} -> {"op":"published","id":N,"seq":S}
 *   anything else                                     -> {"op":"error","id":N,"reason":"bad_request"}
 * Server -> subscribers: {"topic":"t","seq":S,"data":<data bytes as sent>}  (seq starts at 1 per topic)
 * Fan-out uses uWS's native pub/sub (app.publish -> TopicTree, batched and drained once per loop pass).
 * Slow subscribers: once a socket buffers > MAX_BACKPRESSURE bytes, further messages to it are
 * dropped (CLOSE_ON_LIMIT=0) or the socket is shut down (CLOSE_ON_LIMIT=1, no close frame).
 *
 * Built with -DWSSEDGE_UWS_DEFLATE (and zlib, without UWS_NO_ZLIB): permessage-deflate with
 * uWS's SHARED_COMPRESSOR (one zlib stream per loop, no context kept: the answer states
 * server_ and client_no_context_takeover) and publications published with compress = true.
 * uWS deflates a publication once per subscriber it is sent to (WebSocket::send in the topic
 * tree's drain), not once per publication.
 */
#include "App.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct PerSocketData {};

#ifdef WSSEDGE_UWS_DEFLATE
static constexpr uWS::CompressOptions kCompression = uWS::SHARED_COMPRESSOR;
static constexpr bool kCompressPublications = true;
#else
static constexpr uWS::CompressOptions kCompression = uWS::DISABLED;
static constexpr bool kCompressPublications = false;
#endif

static uWS::SSLApp *gApp;
static std::unordered_map<std::string, uint64_t> gSeq;
static uint64_t gDropped = 0, gPublished = 0;

/* ---- tiny JSON scanner (top-level object only; keys found by "key" then ':') ---- */
static size_t skipWs(std::string_view s, size_t i) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}
/* end (exclusive) of the JSON value starting at i, or npos */
static size_t valueEnd(std::string_view s, size_t i) {
    if (i >= s.size()) return std::string_view::npos;
    if (s[i] == '"') {
        for (size_t j = i + 1; j < s.size(); j++) {
            if (s[j] == '\\') { j++; continue; }
            if (s[j] == '"') return j + 1;
        }
        return std::string_view::npos;
    }
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        bool inStr = false;
        for (size_t j = i; j < s.size(); j++) {
            char c = s[j];
            if (inStr) {
                if (c == '\\') j++;
                else if (c == '"') inStr = false;
            } else if (c == '"') inStr = true;
            else if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') { if (--depth == 0) return j + 1; }
        }
        return std::string_view::npos;
    }
    size_t j = i; /* number, true, false, null */
    while (j < s.size() && s[j] != ',' && s[j] != '}' && s[j] != ']' && s[j] != ' ' && s[j] != '\n' && s[j] != '\r' && s[j] != '\t') j++;
    return j == i ? std::string_view::npos : j;
}
/* raw value of a top-level key (walks the top-level object so nested keys do not match) */
static bool field(std::string_view s, std::string_view key, std::string_view &out) {
    size_t i = skipWs(s, 0);
    if (i >= s.size() || s[i] != '{') return false;
    i++;
    while (true) {
        i = skipWs(s, i);
        if (i >= s.size() || s[i] != '"') return false;
        size_t kEnd = valueEnd(s, i);
        if (kEnd == std::string_view::npos) return false;
        std::string_view k = s.substr(i + 1, kEnd - i - 2);
        i = skipWs(s, kEnd);
        if (i >= s.size() || s[i] != ':') return false;
        i = skipWs(s, i + 1);
        size_t vEnd = valueEnd(s, i);
        if (vEnd == std::string_view::npos) return false;
        if (k == key) { out = s.substr(i, vEnd - i); return true; }
        i = skipWs(s, vEnd);
        if (i < s.size() && s[i] == ',') { i++; continue; }
        return false;
    }
}
static bool unquote(std::string_view v, std::string_view &out) {
    if (v.size() < 2 || v.front() != '"' || v.back() != '"') return false;
    out = v.substr(1, v.size() - 2);
    return out.find('\\') == std::string_view::npos;
}
static bool stringArray(std::string_view v, std::vector<std::string_view> &out) {
    if (v.empty() || v[0] != '[') return false;
    size_t i = skipWs(v, 1);
    if (i < v.size() && v[i] == ']') return true;
    while (i < v.size()) {
        size_t e = valueEnd(v, i);
        std::string_view t;
        if (e == std::string_view::npos || !unquote(v.substr(i, e - i), t)) return false;
        out.push_back(t);
        i = skipWs(v, e);
        if (i < v.size() && v[i] == ',') { i = skipWs(v, i + 1); continue; }
        return i < v.size() && v[i] == ']';
    }
    return false;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT CERT KEY [MAX_BACKPRESSURE=4194304] [CLOSE_ON_LIMIT=1] [HOST=127.0.0.1]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    unsigned int maxBackpressure = argc > 4 ? (unsigned int) strtoul(argv[4], nullptr, 10) : 4u * 1024 * 1024;
    bool closeOnLimit = argc > 5 ? atoi(argv[5]) != 0 : true;
    std::string host = argc > 6 ? argv[6] : "127.0.0.1";

    uWS::SSLApp app({.key_file_name = argv[3], .cert_file_name = argv[2]});
    if (app.constructorFailed()) {
        fprintf(stderr, "TLS context failed (cert/key?)\n");
        return 1;
    }
    gApp = &app;

    app.ws<PerSocketData>("/*", {
        .compression = kCompression,
        .maxPayloadLength = 1024 * 1024,
        .idleTimeout = 120,
        .maxBackpressure = maxBackpressure,
        .closeOnBackpressureLimit = closeOnLimit,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = true,
        .message = [](auto *ws, std::string_view msg, uWS::OpCode opCode) {
            std::string_view op, id = "null", v;
            if (opCode != uWS::OpCode::TEXT || !field(msg, "op", v) || !unquote(v, op)) {
                ws->send("{\"op\":\"error\",\"id\":null,\"reason\":\"bad_request\"}", uWS::OpCode::TEXT);
                return;
            }
            field(msg, "id", id);
            std::string reply;
            if (op == "subscribe" || op == "unsubscribe") {
                std::vector<std::string_view> topics;
                if (!field(msg, "topics", v) || !stringArray(v, topics)) goto bad;
                if (op == "unsubscribe") {
                    for (auto t : topics) ws->unsubscribe(t);
                    reply = "{\"op\":\"unsubscribed\",\"id\":" + std::string(id) + "}";
                } else {
                    reply = "{\"op\":\"subscribed\",\"id\":" + std::string(id) + ",\"topics\":[";
                    bool first = true;
                    for (auto t : topics) {
                        ws->subscribe(t);
                        auto it = gSeq.find(std::string(t));
                        reply += (first ? "" : ",");
                        reply += "{\"topic\":\"" + std::string(t) + "\",\"seq\":" + std::to_string(it == gSeq.end() ? 0 : it->second) + "}";
                        first = false;
                    }
                    reply += "]}";
                }
                ws->send(reply, uWS::OpCode::TEXT);
                return;
            }
            if (op == "publish") {
                std::string_view topic, data;
                if (!field(msg, "topic", v) || !unquote(v, topic) || !field(msg, "data", data)) goto bad;
                uint64_t seq = ++gSeq[std::string(topic)];
                std::string out;
                out.reserve(topic.size() + data.size() + 48);
                out += "{\"topic\":\"";
                out += topic;
                out += "\",\"seq\":";
                out += std::to_string(seq);
                out += ",\"data\":";
                out += data;
                out += "}";
                gPublished++;
                /* app.publish (not ws->publish): the publisher gets it too if subscribed */
                gApp->publish(topic, out, uWS::OpCode::TEXT, kCompressPublications);
                reply = "{\"op\":\"published\",\"id\":" + std::string(id) + ",\"seq\":" + std::to_string(seq) + "}";
                ws->send(reply, uWS::OpCode::TEXT);
                return;
            }
        bad:
            reply = "{\"op\":\"error\",\"id\":" + std::string(id) + ",\"reason\":\"bad_request\"}";
            ws->send(reply, uWS::OpCode::TEXT);
        },
        .dropped = [](auto * /*ws*/, std::string_view /*msg*/, uWS::OpCode) {
            gDropped++;
        },
        .close = [](auto * /*ws*/, int /*code*/, std::string_view /*message*/) {}
    }).listen(host, port, [&](auto *ls) {
        if (!ls) {
            fprintf(stderr, "failed to listen on %s:%d\n", host.c_str(), port);
            exit(1);
        }
        printf("listening on %s:%d\n", host.c_str(), us_socket_local_port(1, (struct us_socket_t *) ls));
        fflush(stdout);
    });
    app.run();
    return 0;
}
