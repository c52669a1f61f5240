# layering.cmake - the architecture rule of docs/ARCHITECTURE.md as a test
# (ctest unit.layering): the engine depends on libc, pthreads and OpenBLAS
# only, never on the server. It fails, naming file and line, when a file
# under engine/
#   - includes <uv.h>, <microhttpd.h>, <jansson.h> or <curl/...>, or
#   - has a quoted include that does not resolve to a file under engine/
#     (the including file's folder, engine/src or engine/include), such as a
#     server/ or cli header;
# or when engine/CMakeLists.txt links libuv, libmicrohttpd, jansson, libcurl
# or a server target.
#
#   cmake -DSRC=<source root> -P tests/layering.cmake

if(NOT SRC OR NOT IS_DIRECTORY "${SRC}/engine")
  message(FATAL_ERROR "layering: pass -DSRC=<source root> (with an engine/ folder)")
endif()
get_filename_component(SRC "${SRC}" REALPATH)
set(ENGINE "${SRC}/engine")

file(GLOB_RECURSE files "${ENGINE}/*.c" "${ENGINE}/*.h")
list(LENGTH files n_files)
if(n_files EQUAL 0)
  message(FATAL_ERROR "layering: no sources under ${ENGINE}")
endif()

set(bad "")
foreach(f ${files})
  get_filename_component(dir "${f}" DIRECTORY)
  file(RELATIVE_PATH rel "${SRC}" "${f}")
  file(STRINGS "${f}" lines REGEX "^[ \t]*#[ \t]*include")
  foreach(l ${lines})
    if(l MATCHES "<([^>]+)>")
      set(h "${CMAKE_MATCH_1}")
      if(h MATCHES "^(uv|microhttpd|jansson)\\.h$" OR h MATCHES "^(uv|curl)/")
        list(APPEND bad "${rel}: ${l} (the engine never includes ${h})")
      endif()
    elseif(l MATCHES "\"([^\"]+)\"")
      set(h "${CMAKE_MATCH_1}")
      set(found "")
      foreach(base "${dir}" "${ENGINE}/src" "${ENGINE}/include")
        if(NOT found AND EXISTS "${base}/${h}")
          get_filename_component(found "${base}/${h}" REALPATH)
        endif()
      endforeach()
      if(NOT found)
        list(APPEND bad "${rel}: ${l} (not a file of engine/)")
      else()
        file(RELATIVE_PATH to "${ENGINE}" "${found}")
        if(to MATCHES "^\\.\\./")
          file(RELATIVE_PATH shown "${SRC}" "${found}")
          list(APPEND bad "${rel}: ${l} (resolves outside engine/: ${shown})")
        endif()
      endif()
    endif()
  endforeach()
endforeach()

file(STRINGS "${ENGINE}/CMakeLists.txt" cm)
foreach(l ${cm})
  if(l MATCHES "PkgConfig::(LIBUV|UV|MHD|JANSSON|CURL)|orthoserve_server|libuv|microhttpd|jansson|libcurl")
    list(APPEND bad "engine/CMakeLists.txt: ${l} (the engine links libc, pthreads and OpenBLAS only)")
  endif()
endforeach()

if(bad)
  list(JOIN bad "\n  " text)
  message(FATAL_ERROR "layering: the engine reaches into the server or its libraries:\n  ${text}")
endif()
message(STATUS "layering: ${n_files} engine files, no server or HTTP/JSON/loop includes")
