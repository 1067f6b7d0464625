/*
 * debugexit: a guest that stops the VM through QEMU's isa-debug-exit
 * device at I/O port 0x501, with which QEMU exits with status (v<<1)|1
 * for the value v written.
 *
 * An ELF64 kernel, entered in 64-bit long mode with RSI = the Linux zero
 * page; it reads its command line from the zero page (cmd_line_ptr), as a
 * kernel built for Firecracker would, and not capsule's boot info. It
 *   1. prints "debugexit: writing to port 0x501\n" on COM1 (port 0x3f8),
 *   2. writes v, the N of the last whitespace-separated token "exit=N" on
 *      the command line (N decimal, 0-255; malformed tokens are ignored;
 *      default 1), to port 0x501 as a 32-bit OUT (out dx, eax),
 *   3. if the VM still runs (no such device), prints "debugexit: port
 *      0x501 did not stop the VM\n" and writes 2 to port 0xf4 (capsule's
 *      exit port): an even status, which (v<<1)|1 never is,
 *   4. halts with interrupts off, forever.
 *
 * Build (hello.ld puts everything in one PT_LOAD at 1 MiB):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/debugexit.elf testdata/guests/debugexit.S
 *
 * Only block comments here: the file goes through cpp when built by gcc
 * and straight to as otherwise.
 */
	.intel_syntax noprefix
	.code64

	.set	ZP_EXT_CMD_LINE_PTR, 0x0c8
	.set	ZP_CMD_LINE_PTR, 0x228
	.set	DEBUG_EXIT_PORT, 0x501

	.section .rodata, "a"
msg_writing:
	.ascii	"debugexit: writing to port 0x501\n"
	.set	msg_writing_len, . - msg_writing
msg_still:
	.ascii	"debugexit: port 0x501 did not stop the VM\n"
	.set	msg_still_len, . - msg_still

	.section .text.start, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	mov	rbx, rsi		/* rbx: the zero page */

	xor	r13d, r13d		/* r13: command-line length */
	mov	r12d, dword ptr [rbx + ZP_CMD_LINE_PTR]
	mov	eax, dword ptr [rbx + ZP_EXT_CMD_LINE_PTR]
	test	eax, eax
	jnz	.Lparse			/* above 4 GiB: ignore the command line */
	test	r12, r12
	jz	.Lparse
.Lstrlen:				/* r12: the command line, NUL-terminated */
	cmp	byte ptr [r12 + r13], 0
	je	.Lparse
	inc	r13
	cmp	r13, 0xffff
	jb	.Lstrlen
.Lparse:
	mov	rsi, r12
	mov	rcx, r13
	call	parse_exit
	mov	r14d, eax		/* r14: the value to write */

	lea	rsi, [rip + msg_writing]
	mov	ecx, msg_writing_len
	call	puts
	mov	eax, r14d
	mov	edx, DEBUG_EXIT_PORT
	out	dx, eax			/* QEMU exits here with (v<<1)|1 */

	lea	rsi, [rip + msg_still]
	mov	ecx, msg_still_len
	call	puts
	mov	al, 2
	out	0xf4, al
.Lhalt:
	cli
	hlt
	jmp	.Lhalt
	.size	_start, . - _start

/*
 * puts writes rcx bytes from [rsi] to COM1, one OUT per byte.
 * Clobbers rax, rcx, rdx, rsi.
 */
	.text
	.type	puts, @function
puts:
	mov	edx, 0x3f8
	jrcxz	.Lputs_done
.Lputs_loop:
	lodsb
	out	dx, al
	loop	.Lputs_loop
.Lputs_done:
	ret
	.size	puts, . - puts

/*
 * parse_exit scans the rcx-byte command line at [rsi] for tokens
 * (separated by bytes <= 0x20) of the form "exit=N", N decimal, 0 to 255,
 * and returns in eax the N of the last valid one, or 1.
 * Clobbers rax, rcx, rdx, rsi, r8, r9.
 */
	.type	parse_exit, @function
parse_exit:
	mov	r8d, 1			/* r8: result so far */
.Lskip_space:				/* move to the start of the next token */
	test	rcx, rcx
	jz	.Lparse_done
	cmp	byte ptr [rsi], 0x20
	ja	.Ltoken
	inc	rsi
	dec	rcx
	jmp	.Lskip_space
.Ltoken:
	cmp	rcx, 5
	jb	.Lskip_token
	cmp	dword ptr [rsi], 0x74697865	/* "exit" */
	jne	.Lskip_token
	cmp	byte ptr [rsi + 4], 0x3d	/* '=' */
	jne	.Lskip_token
	add	rsi, 5
	sub	rcx, 5
	xor	edx, edx		/* edx: value */
	xor	r9d, r9d		/* r9: number of digits */
.Ldigit:
	test	rcx, rcx
	jz	.Lnumber_end
	movzx	eax, byte ptr [rsi]
	cmp	al, 0x20
	jbe	.Lnumber_end
	sub	al, 0x30		/* '0' */
	cmp	al, 9
	ja	.Lskip_token		/* not a digit: ignore the token */
	imul	edx, edx, 10
	add	edx, eax
	cmp	edx, 255
	ja	.Lskip_token		/* too large: ignore the token */
	inc	r9d
	inc	rsi
	dec	rcx
	jmp	.Ldigit
.Lnumber_end:
	test	r9d, r9d
	jz	.Lskip_space		/* "exit=" alone: ignore */
	mov	r8d, edx
	jmp	.Lskip_space
.Lskip_token:				/* move past the rest of the token */
	test	rcx, rcx
	jz	.Lparse_done
	cmp	byte ptr [rsi], 0x20
	jbe	.Lskip_space
	inc	rsi
	dec	rcx
	jmp	.Lskip_token
.Lparse_done:
	mov	eax, r8d
	ret
	.size	parse_exit, . - parse_exit

	.section .note.GNU-stack, "", @progbits
