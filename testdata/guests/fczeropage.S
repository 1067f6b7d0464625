/*
 * fczeropage: a guest that boots the way a kernel built for Firecracker
 * does, reading only the Linux zero page (struct boot_params) in RSI and
 * never capsule's boot-info block in RDI.
 *
 * Entered in 64-bit long mode, identity-mapped, interrupts off, with
 * RSI = the zero page and RSP = a stack. It checks, in this order, and
 * on the first failure prints "zero page: <what>\n" on COM1 (port 0x3f8)
 * and writes the status to port 0xf4 (capsule's exit port):
 *    9  RSI is 0 or the page is not below 4 GiB (not identity-mapped),
 *   10  boot_flag at 0x1fe is not 0xaa55,
 *   11  the header at 0x202 is not "HdrS",
 *   12  cmd_line_ptr (0x228, high half in ext_cmd_line_ptr at 0xc8) is 0
 *       or not below 4 GiB,
 *   13  e820_entries (0x1e8) is 0 or above 128,
 *   14  an e820_table entry (0x2d0, 20 bytes each: u64 addr, u64 size,
 *       u32 type) is empty, of a type other than 1-5, overflows, or
 *       starts below the end of the one before it.
 * type_of_loader (0x210) may be any value. When all hold it prints
 * "zero page ok\n" and "cmdline: <cmdline>\n" (the NUL-terminated string
 * at cmd_line_ptr, at most 65535 bytes) and exits with status 0. It then
 * halts with interrupts off, forever.
 *
 * Build (hello.ld puts everything in one PT_LOAD at 1 MiB):
 *   gcc -nostdlib -static -no-pie -Wl,-T,testdata/guests/hello.ld \
 *       -Wl,--build-id=none -o testdata/guests/fczeropage.elf testdata/guests/fczeropage.S
 *
 * Only block comments here: gcc puts the file through cpp (as it does
 * every .S file), which also brings in #include "lib64.inc".
 */
	.intel_syntax noprefix
	.code64

	.set	ZP_EXT_CMD_LINE_PTR, 0x0c8
	.set	ZP_E820_ENTRIES, 0x1e8
	.set	ZP_BOOT_FLAG, 0x1fe
	.set	ZP_HEADER, 0x202
	.set	ZP_CMD_LINE_PTR, 0x228
	.set	ZP_E820_TABLE, 0x2d0
	.set	E820_ENTRY_SIZE, 20
	.set	E820_MAX, 128

	.section .rodata, "a"
msg_ok:
	.ascii	"zero page ok\n"
	.set	msg_ok_len, . - msg_ok
msg_cmdline:
	.ascii	"cmdline: "
	.set	msg_cmdline_len, . - msg_cmdline
msg_newline:
	.ascii	"\n"
msg_prefix:
	.ascii	"zero page: "
	.set	msg_prefix_len, . - msg_prefix
msg_rsi:
	.ascii	"RSI is 0 or not below 4 GiB\n"
	.set	msg_rsi_len, . - msg_rsi
msg_flag:
	.ascii	"boot_flag is not 0xaa55\n"
	.set	msg_flag_len, . - msg_flag
msg_hdrs:
	.ascii	"header is not HdrS\n"
	.set	msg_hdrs_len, . - msg_hdrs
msg_cmdptr:
	.ascii	"cmd_line_ptr is 0 or not below 4 GiB\n"
	.set	msg_cmdptr_len, . - msg_cmdptr
msg_count:
	.ascii	"e820_entries is 0 or above 128\n"
	.set	msg_count_len, . - msg_count
msg_entry:
	.ascii	"bad e820 entry\n"
	.set	msg_entry_len, . - msg_entry

	.section .text.start, "ax", @progbits
	.globl	_start
	.type	_start, @function
_start:
	cld
	mov	rbx, rsi		/* rbx: the zero page, kept throughout */

	test	rbx, rbx
	jz	.Lbad_rsi
	mov	eax, 0xfffff000		/* the whole page below 4 GiB */
	cmp	rbx, rax
	ja	.Lbad_rsi

	cmp	word ptr [rbx + ZP_BOOT_FLAG], 0xaa55
	jne	.Lbad_flag
	cmp	dword ptr [rbx + ZP_HEADER], 0x53726448	/* "HdrS" */
	jne	.Lbad_hdrs

	mov	r12d, dword ptr [rbx + ZP_CMD_LINE_PTR]
	mov	eax, dword ptr [rbx + ZP_EXT_CMD_LINE_PTR]
	test	eax, eax
	jnz	.Lbad_cmdptr		/* above 4 GiB: not identity-mapped */
	test	r12, r12
	jz	.Lbad_cmdptr		/* r12: the command line */

	movzx	ecx, byte ptr [rbx + ZP_E820_ENTRIES]
	test	ecx, ecx
	jz	.Lbad_count
	cmp	ecx, E820_MAX
	ja	.Lbad_count
	lea	rsi, [rbx + ZP_E820_TABLE]
	xor	r8d, r8d		/* r8: end of the entry before */
.Le820_loop:
	mov	rax, qword ptr [rsi]		/* addr */
	mov	rdx, qword ptr [rsi + 8]	/* size */
	mov	r9d, dword ptr [rsi + 16]	/* type */
	test	rdx, rdx
	jz	.Lbad_entry
	dec	r9d			/* types 1-5 become 0-4; 0 wraps */
	cmp	r9d, 4
	ja	.Lbad_entry
	cmp	rax, r8
	jb	.Lbad_entry
	add	rax, rdx
	jc	.Lbad_entry
	mov	r8, rax
	add	rsi, E820_ENTRY_SIZE
	dec	ecx
	jnz	.Le820_loop

	lea	rsi, [rip + msg_ok]
	mov	ecx, msg_ok_len
	call	puts
	lea	rsi, [rip + msg_cmdline]
	mov	ecx, msg_cmdline_len
	call	puts
	mov	rsi, r12
	call	putz
	lea	rsi, [rip + msg_newline]
	mov	ecx, 1
	call	puts
	xor	eax, eax
	out	0xf4, al		/* capsule stops the VM here */
.Lhalt:
	cli
	hlt
	jmp	.Lhalt

.Lbad_rsi:
	lea	r13, [rip + msg_rsi]
	mov	r14d, msg_rsi_len
	mov	r15d, 9
	jmp	.Lfail
.Lbad_flag:
	lea	r13, [rip + msg_flag]
	mov	r14d, msg_flag_len
	mov	r15d, 10
	jmp	.Lfail
.Lbad_hdrs:
	lea	r13, [rip + msg_hdrs]
	mov	r14d, msg_hdrs_len
	mov	r15d, 11
	jmp	.Lfail
.Lbad_cmdptr:
	lea	r13, [rip + msg_cmdptr]
	mov	r14d, msg_cmdptr_len
	mov	r15d, 12
	jmp	.Lfail
.Lbad_count:
	lea	r13, [rip + msg_count]
	mov	r14d, msg_count_len
	mov	r15d, 13
	jmp	.Lfail
.Lbad_entry:
	lea	r13, [rip + msg_entry]
	mov	r14d, msg_entry_len
	mov	r15d, 14
.Lfail:					/* r13, r14: message; r15: status */
	lea	rsi, [rip + msg_prefix]
	mov	ecx, msg_prefix_len
	call	puts
	mov	rsi, r13
	mov	ecx, r14d
	call	puts
	mov	eax, r15d
	out	0xf4, al
	jmp	.Lhalt
	.size	_start, . - _start

#include "lib64.inc"

/*
 * putz writes the NUL-terminated string at [rsi] to COM1, at most 65535
 * bytes of it. Clobbers rax, rcx, rdx, rsi.
 */
	.type	putz, @function
putz:
	mov	edx, 0x3f8
	mov	ecx, 0xffff
.Lputz_loop:
	lodsb
	test	al, al
	jz	.Lputz_done
	out	dx, al
	loop	.Lputz_loop
.Lputz_done:
	ret
	.size	putz, . - putz

	.section .note.GNU-stack, "", @progbits
