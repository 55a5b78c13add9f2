/* Print nginx struct offsets for Debian nginx 1.22.1 (--with-compat build). */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <stdio.h>
#include <stddef.h>

#define OFF(T, f)  printf("%-28s %-28s = %4zu (0x%zx)\n", #T, #f, offsetof(T, f), offsetof(T, f))
#define SZ(T)      printf("%-28s %-28s = %4zu (0x%zx)\n", "sizeof", #T, sizeof(T), sizeof(T))
#define FSZ(T, f)  printf("%-28s %-28s = %4zu\n", "sizeof field", #T "." #f, sizeof(((T *)0)->f))

int main(void)
{
#if (NGX_HTTP_CACHE)
    printf("NGX_HTTP_CACHE defined = %d\n", NGX_HTTP_CACHE);
#else
    printf("NGX_HTTP_CACHE NOT defined\n");
#endif
#if (NGX_COMPAT)
    printf("NGX_COMPAT defined = %d\n", NGX_COMPAT);
#else
    printf("NGX_COMPAT NOT defined\n");
#endif
    printf("sizeof(ngx_msec_t) = %zu\n", sizeof(ngx_msec_t));
    printf("sizeof(time_t) = %zu\n", sizeof(time_t));
    printf("sizeof(ngx_uint_t) = %zu\n", sizeof(ngx_uint_t));
    printf("sizeof(off_t) = %zu\n", sizeof(off_t));
    printf("\n");

    OFF(ngx_http_request_t, signature);
    OFF(ngx_http_request_t, connection);
    OFF(ngx_http_request_t, ctx);
    OFF(ngx_http_request_t, main_conf);
    OFF(ngx_http_request_t, srv_conf);
    OFF(ngx_http_request_t, loc_conf);
    OFF(ngx_http_request_t, upstream);
    OFF(ngx_http_request_t, upstream_states);
    OFF(ngx_http_request_t, pool);
    OFF(ngx_http_request_t, headers_in);
    OFF(ngx_http_request_t, headers_in.host);
    OFF(ngx_http_request_t, headers_out);
    OFF(ngx_http_request_t, headers_out.status);
    OFF(ngx_http_request_t, request_body);
    OFF(ngx_http_request_t, start_sec);
    OFF(ngx_http_request_t, start_msec);
    OFF(ngx_http_request_t, method);
    OFF(ngx_http_request_t, http_version);
    OFF(ngx_http_request_t, request_line);
    OFF(ngx_http_request_t, uri);
    OFF(ngx_http_request_t, args);
    OFF(ngx_http_request_t, exten);
    OFF(ngx_http_request_t, unparsed_uri);
    OFF(ngx_http_request_t, method_name);
    OFF(ngx_http_request_t, http_protocol);
    OFF(ngx_http_request_t, schema);
    OFF(ngx_http_request_t, main);
    OFF(ngx_http_request_t, parent);
    OFF(ngx_http_request_t, phase_handler);
    OFF(ngx_http_request_t, err_status);
    OFF(ngx_http_request_t, http_connection);
    OFF(ngx_http_request_t, stream);
    OFF(ngx_http_request_t, log_handler);
    OFF(ngx_http_request_t, cleanup);
    SZ(ngx_http_request_t);
    SZ(ngx_http_headers_in_t);
    SZ(ngx_http_headers_out_t);
    FSZ(ngx_http_request_t, headers_out.status);
    FSZ(ngx_http_request_t, err_status);
    FSZ(ngx_http_request_t, method);
    FSZ(ngx_http_request_t, start_msec);
    printf("\n");

    OFF(ngx_str_t, len);
    OFF(ngx_str_t, data);
    SZ(ngx_str_t);
    printf("\n");

    OFF(ngx_table_elt_t, hash);
    OFF(ngx_table_elt_t, key);
    OFF(ngx_table_elt_t, value);
    OFF(ngx_table_elt_t, lowcase_key);
    SZ(ngx_table_elt_t);
    printf("\n");

    OFF(ngx_array_t, elts);
    OFF(ngx_array_t, nelts);
    OFF(ngx_array_t, size);
    OFF(ngx_array_t, nalloc);
    OFF(ngx_array_t, pool);
    SZ(ngx_array_t);
    printf("\n");

    /* bl_time: no such field in nginx 1.22.1 (struct starts with status) */
    OFF(ngx_http_upstream_state_t, status);
    OFF(ngx_http_upstream_state_t, response_time);
    OFF(ngx_http_upstream_state_t, connect_time);
    OFF(ngx_http_upstream_state_t, header_time);
    OFF(ngx_http_upstream_state_t, queue_time);
    OFF(ngx_http_upstream_state_t, response_length);
    OFF(ngx_http_upstream_state_t, bytes_received);
    OFF(ngx_http_upstream_state_t, bytes_sent);
    OFF(ngx_http_upstream_state_t, peer);
    SZ(ngx_http_upstream_state_t);
    FSZ(ngx_http_upstream_state_t, status);
    FSZ(ngx_http_upstream_state_t, response_time);
    printf("\n");

    OFF(ngx_http_core_loc_conf_t, name);
    printf("\n");

    OFF(ngx_module_t, ctx_index);
    OFF(ngx_module_t, index);
    OFF(ngx_module_t, name);
    OFF(ngx_module_t, version);
    OFF(ngx_module_t, ctx);
    OFF(ngx_module_t, type);
    SZ(ngx_module_t);
    printf("\n");

    OFF(ngx_connection_t, data);
    OFF(ngx_connection_t, fd);
    OFF(ngx_connection_t, log);
    OFF(ngx_connection_t, pool);
    OFF(ngx_connection_t, number);
    OFF(ngx_connection_t, requests);
    SZ(ngx_connection_t);
    FSZ(ngx_connection_t, number);
    FSZ(ngx_connection_t, requests);
    printf("\n");

    OFF(ngx_time_t, sec);
    OFF(ngx_time_t, msec);
    OFF(ngx_time_t, gmtoff);
    SZ(ngx_time_t);
    FSZ(ngx_time_t, msec);
    FSZ(ngx_time_t, gmtoff);
    return 0;
}
